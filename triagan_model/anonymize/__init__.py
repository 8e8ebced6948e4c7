"""Full-image and video anonymisation with TriA-GAN (`triagan anonymize`; anonymize-spec).

`from triagan_model.anonymize import Anonymizer, AnonymizeSettings, Person`; heavy optional
dependencies (PyAV, torchvision's detector) load only where they are used.
"""

from triagan_model.anonymize.api import AnonymizedImage, Anonymizer, AnonymizeSettings
from triagan_model.anonymize.compose import Person
from triagan_model.anonymize.pose import PoseEstimator

__all__ = ["AnonymizeSettings", "AnonymizedImage", "Anonymizer", "Person", "PoseEstimator"]
