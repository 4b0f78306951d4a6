"""Differential privacy: sample-level DP-SGD on sites (opacus) with a persistent per-site
accountant, patient-level ε (patient sampling) and noise seeded from a secret only the site holds;
site-level DP lives in the strategy factory (Flower's server-side DP wrapper)."""

from fedecho.privacy.accountant import SiteAccountant
from fedecho.privacy.compat import check_sample_dp
from fedecho.privacy.dpsgd import SitePrivacy, poisson_loader
from fedecho.privacy.secret import SECRET_FILE, SiteSecret
from fedecho.privacy.unit import examples_per_patient, patient_groups

__all__ = ["SECRET_FILE", "SiteAccountant", "SitePrivacy", "SiteSecret", "check_sample_dp",
           "examples_per_patient", "patient_groups", "poisson_loader"]
