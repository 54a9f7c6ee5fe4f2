"""Face geometry: landmark types, centering, and (later) alignment matrices, pose and masks."""
from faceinfer.geometry.constants import EXTRACT_RATIOS, Centering, CenteringType, LandmarkType

__all__ = ["EXTRACT_RATIOS", "Centering", "CenteringType", "LandmarkType"]
