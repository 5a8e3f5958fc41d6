"""amcl-keras: Adaptive Multi-Head Contrastive Learning (ECCV 2024) for Keras 3 / TensorFlow."""

from amcl_keras import losses
from amcl_keras.heads import MultiHeadProjector, ProjectionHead
from amcl_keras.temperature import AdaptiveTemperature, omega

__version__ = "0.1.0"
__all__ = ["AdaptiveTemperature", "MultiHeadProjector", "ProjectionHead", "losses", "omega"]
