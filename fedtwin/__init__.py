"""fedtwin: privacy-preserving federated digital twins for hospitals.

Hospitals keep patient data on site; a consortium coordinator federates the training of patient
twin models with Flower; each site trains with Opacus differential privacy whose unit is the
patient.
"""

from fedtwin._internal.env import quiet_flower_environment

__version__ = "0.1.0"

quiet_flower_environment()

__all__ = ["__version__"]
