"""Pinhole camera intrinsics and how they change when an image is resized or cropped.

Convention: pixel (u, v) with the origin at the CENTRE of the top-left pixel (OpenCV, ROS
camera_info). Distortion follows OpenCV's plumb_bob / rational_polynomial coefficient order.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class PinholeCamera:
    """Intrinsics of one image: focal lengths and principal point in pixels, size in pixels."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    dist: tuple[float, ...] = field(default_factory=tuple)  # OpenCV order (k1, k2, p1, p2, k3, ...)

    def __post_init__(self) -> None:
        vals = [self.fx, self.fy, self.cx, self.cy]
        if self.width <= 0 or self.height <= 0 or not np.all(np.isfinite(vals)) or self.fx <= 0 or self.fy <= 0:
            raise ValueError(
                f"invalid camera: size {self.width}x{self.height}, fx={self.fx}, fy={self.fy}, "
                f"cx={self.cx}, cy={self.cy} (need positive size and focal lengths, finite values)"
            )

    @property
    def K(self) -> np.ndarray:
        """3x3 intrinsic matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @classmethod
    def from_K(cls, K_33: np.ndarray, width: int, height: int, dist: tuple[float, ...] = ()) -> PinholeCamera:
        K = np.asarray(K_33, dtype=np.float64)
        return cls(
            int(width),
            int(height),
            float(K[0, 0]),
            float(K[1, 1]),
            float(K[0, 2]),
            float(K[1, 2]),
            tuple(float(d) for d in dist),
        )

    def resized(self, new_width: int, new_height: int) -> PinholeCamera:
        """Intrinsics after resizing the whole image to (new_width, new_height).

        With pixel centres at integers, u' = (u + 0.5) * s - 0.5 (what cv2.resize does).
        """
        sx = new_width / self.width
        sy = new_height / self.height
        return replace(
            self,
            width=int(new_width),
            height=int(new_height),
            fx=self.fx * sx,
            fy=self.fy * sy,
            cx=(self.cx + 0.5) * sx - 0.5,
            cy=(self.cy + 0.5) * sy - 0.5,
        )

    def cropped(self, x0: int, y0: int, width: int, height: int) -> PinholeCamera:
        """Intrinsics of the crop [x0, x0+width) x [y0, y0+height)."""
        if x0 < 0 or y0 < 0 or x0 + width > self.width or y0 + height > self.height:
            raise ValueError(f"crop ({x0},{y0},{width},{height}) outside image {self.width}x{self.height}")
        return replace(self, width=int(width), height=int(height), cx=self.cx - x0, cy=self.cy - y0)

    def project(self, p_cam_N3: np.ndarray) -> np.ndarray:
        """Pixels (N, 2) of camera-frame points (N, 3) (no distortion); z must be > 0."""
        p = np.asarray(p_cam_N3, dtype=np.float64)
        return np.stack([self.fx * p[:, 0] / p[:, 2] + self.cx, self.fy * p[:, 1] / p[:, 2] + self.cy], axis=1)

    def unproject(self, uv_N2: np.ndarray) -> np.ndarray:
        """Unit-depth rays (N, 3) (z = 1) through pixels (N, 2) (no distortion)."""
        uv = np.asarray(uv_N2, dtype=np.float64)
        return np.stack([(uv[:, 0] - self.cx) / self.fx, (uv[:, 1] - self.cy) / self.fy, np.ones(len(uv))], axis=1)

    def to_dict(self) -> dict:
        return {
            "width": self.width,
            "height": self.height,
            "fx": self.fx,
            "fy": self.fy,
            "cx": self.cx,
            "cy": self.cy,
            "dist": list(self.dist),
        }

    @classmethod
    def from_dict(cls, d: dict) -> PinholeCamera:
        return cls(
            int(d["width"]),
            int(d["height"]),
            float(d["fx"]),
            float(d["fy"]),
            float(d["cx"]),
            float(d["cy"]),
            tuple(float(x) for x in d.get("dist", ())),
        )
