"""Datasets: the on-disk layout, readers, converters, rosbag tools and synthetic scenes."""

from .layout import Dataset, DatasetError, DatasetWriter, FrameRecord, SequenceInfo

__all__ = ["Dataset", "DatasetError", "DatasetWriter", "FrameRecord", "SequenceInfo"]
