"""The APR localizer: one forward pass of a trained absolute pose regressor per image.

Loaded from an artifact folder written by ``visloc train`` (models/apr/artifact.py) with
``load_localizer(path)``; registered as ``"apr"`` in ``localizers.loading.LOCALIZERS``.

Per image: resize so the image covers the trained input size and centre-crop (exactly the
validation preprocessing), run the model, undo the per-scene position normalisation, normalise the
quaternion. The camera intrinsics are NOT an input of APR models: a camera whose field of view
(focal length after the resize + crop) differs from the training camera's gives a biased pose, as
the network learned appearance -> pose for the training optics. The artifact stores the training
camera at the network input; the localizer logs a warning once and sets
``extras["focal_ratio"]`` when the query camera's differs by more than 5 %. Map and localize with
the same camera model and aspect ratio.

Result: LOCALIZED with the calibrated diagonal covariance of the artifact; NOT_LOCALIZED ("uncertain")
when that covariance does not put the pose within the precision class (``precision_class.py``:
25 cm / 2 deg with probability 0.68 by default, ``artifact.json["decision"]``, set at training by
the ``decision:`` config keys): an APR whose held-out error is decimetres publishes nothing a robot
would fuse at that class, and its pose stays in ``extras["T_world_cam_refused"]``; or REJECTED with
a reason when the image is unlike the training images (its embedding farther from them than the artifact's
threshold: models/apr/familiarity.py, measured on held-out training frames), the pose is non-finite,
or it lies outside the mapped region (box of training camera centres plus margin of the predicted
scene). With a familiarity model the covariance grows with that distance (``var(d) = a + b d^2`` per
axis, fitted on the held-out frames); artifacts without one use the diagonal validation covariance.
``extras["familiarity_distance"]`` and ``["familiarity_threshold"]`` report the test. ``confidence`` is the
scene-classification probability for multi-scene models and 1.0 for single-scene models (APR has no
per-image uncertainty; use the covariance). ``prior`` is not used (one global regression per image).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from ..data.torch_dataset import ImageTransform, apply_geometry
from ..geometry import PinholeCamera, T_from_position_quat_wxyz
from ..models.apr.artifact import APRArtifact, load_apr_artifact
from .base import LocalizationResult, Localizer, Status, check_query_image
from .loading import LOCALIZERS
from .precision_class import PrecisionClass, sigmas, uncertain_reasons

log = logging.getLogger(__name__)


class APRLocalizer(Localizer):
    def __init__(self, artifact: APRArtifact, device: str = "cpu") -> None:
        self.artifact = artifact
        self.device = torch.device(device)
        self.model = artifact.model.to(self.device).eval()
        self.method = f"apr/{artifact.meta['model']}"
        img = artifact.meta["image"]
        self.width, self.height = int(img["width"]), int(img["height"])
        self.transform = ImageTransform(self.width, self.height, crop="center")
        self.scenes = artifact.scenes
        self.covariance_66 = np.diag(np.concatenate([artifact.translation_var_m2, artifact.rotation_var_rad2]))
        self._rng = np.random.default_rng(0)  # unused by a centre crop; ImageTransform's signature wants one
        self._geometry_cache: tuple[tuple, tuple, float] | None = None
        fam = artifact.meta.get("calibration", {}).get("familiarity")
        self.familiarity = None
        emb_path = artifact.path / "embeddings.npy"
        if fam and emb_path.is_file():
            self.familiarity = fam
            self.train_embeddings = np.load(emb_path).astype(np.float32)
            self.variance_scale = float(artifact.meta["calibration"].get("variance_scale", 1.0))
        train_cam = img.get("training_camera_input")
        self._train_fx = float(train_cam["fx"]) if train_cam else None
        self._warned_focal = False
        # artifacts trained before the decision keys existed get the default (honest) precision class
        self.precision_class = PrecisionClass.from_dict(artifact.meta.get("decision"))

    def preprocess(self, image_rgb_HW3: np.ndarray, camera: PinholeCamera | None = None) -> torch.Tensor:
        """uint8 RGB (H, W, 3) -> float tensor (1, 3, h, w) in [0, 1] on the device."""
        img = check_query_image(image_rgb_HW3, camera)
        h, w = img.shape[:2]
        key = (w, h, camera.fx if camera is not None else None)
        if self._geometry_cache is None or self._geometry_cache[0] != key:
            # Geometry only depends on the input size (and focal length): compute once, not per image.
            cam = camera if camera is not None else PinholeCamera(w, h, w, w, w / 2, h / 2)
            resized, box, final = self.transform.geometry(cam, self._rng)
            ratio = final.fx / self._train_fx if (camera is not None and self._train_fx) else 1.0
            self._geometry_cache = (key, ((resized.width, resized.height), box), ratio)
            if abs(ratio - 1.0) > 0.05 and not self._warned_focal:
                log.warning(
                    "query camera focal length at the network input is %.2fx the training camera's; "
                    "APR poses will be biased (intrinsics are not modelled by APR)",
                    ratio,
                )
                self._warned_focal = True
        size, box = self._geometry_cache[1]
        crop = apply_geometry(img, size, box, cv2.INTER_AREA)
        x = torch.from_numpy(np.ascontiguousarray(crop)).to(self.device)
        return x.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)

    @torch.inference_mode()
    def predict(self, image_B3HW: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw model outputs (normalised positions) for a preprocessed batch."""
        return self.model(image_B3HW)

    def localize(
        self,
        image_rgb_HW3: np.ndarray,
        camera: PinholeCamera,
        stamp_ns: int,
        prior: np.ndarray | None = None,
    ) -> LocalizationResult:
        t0 = time.perf_counter()
        x = self.preprocess(image_rgb_HW3, camera)
        t1 = time.perf_counter()
        from ..models.apr.familiarity import capture_embedding, knn_distance, variance_at

        with capture_embedding(self.model) as emb:
            out = self.predict(x)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t2 = time.perf_counter()
        logits = out.get("scene_logits_BS")
        if logits is not None:
            prob = torch.softmax(logits[0].float(), dim=0)
            sid = int(prob.argmax())
            confidence = float(prob[sid])
        else:
            sid, confidence = 0, 1.0
        scene = self.scenes[sid]
        p_norm = out["position_B3"][0].double().cpu().numpy()
        q = out["quat_B4"][0].double().cpu().numpy()
        position = p_norm * scene.position_scale + scene.position_mean
        qn = float(np.linalg.norm(q))
        stages = {"preprocess": t1 - t0, "inference": t2 - t1}
        common = {
            "method": self.method,
            "confidence": confidence,
            "scene": scene.name,
            "extras": {"quat_norm": qn, "scene_id": sid, "focal_ratio": self._geometry_cache[2]},
        }
        if not (np.all(np.isfinite(position)) and np.all(np.isfinite(q)) and qn > 1e-6):
            stages["postprocess"] = time.perf_counter() - t2
            return LocalizationResult(
                np.full((4, 4), np.nan),
                np.full((6, 6), np.nan),
                Status.REJECTED,
                status_reason="non-finite pose from the network",
                stage_seconds=stages,
                **common,
            )
        T_world_cam = T_from_position_quat_wxyz(position, q / qn)
        status, reason = Status.LOCALIZED, ""
        cov = self.covariance_66.copy()
        if self.familiarity is not None and emb:
            fam = self.familiarity
            d = float(knn_distance(emb[-1].cpu().numpy(), self.train_embeddings, int(fam["k"]))[0])
            common["extras"].update(familiarity_distance=d, familiarity_threshold=float(fam["threshold"]))
            var = np.r_[variance_at(fam["variance_translation_m2"], d), variance_at(fam["variance_rotation_rad2"], d)]
            cov = np.diag(var * self.variance_scale)
            if d > fam["threshold"]:
                status = Status.REJECTED
                reason = (
                    f"image unlike the training images: feature distance {d:.4f} > {fam['threshold']:.4f} "
                    f"(farther than {100 * fam['quantile']:.0f} % of held-out training frames)"
                )
        if status == Status.LOCALIZED and not scene.contains(position):
            status = Status.REJECTED
            reason = (
                f"pose outside the mapped region of scene {scene.name!r}: position {np.round(position, 2).tolist()} m "
                f"not in box {np.round(scene.region_min, 2).tolist()} .. {np.round(scene.region_max, 2).tolist()}"
            )
        if status == Status.LOCALIZED:
            uncertain = uncertain_reasons(*sigmas(cov), self.precision_class)
            if uncertain:
                common["extras"].update(T_world_cam_refused=T_world_cam.tolist(), covariance_refused=cov.tolist())
                stages["postprocess"] = time.perf_counter() - t2
                return LocalizationResult.not_localized(reason="; ".join(uncertain), stage_seconds=stages, **common)
        stages["postprocess"] = time.perf_counter() - t2
        return LocalizationResult(T_world_cam, cov, status, status_reason=reason, stage_seconds=stages, **common)


@LOCALIZERS.register("apr")
def load_apr_localizer(artifact_dir: Path, device: str = "cpu") -> APRLocalizer:
    return APRLocalizer(load_apr_artifact(artifact_dir, device), device)
