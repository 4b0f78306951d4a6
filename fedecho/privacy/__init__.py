"""Differential privacy: sample-level DP-SGD on sites (opacus) with a persistent per-site
accountant; site-level DP lives in the strategy factory (Flower's server-side DP wrapper)."""

from fedecho.privacy.accountant import SiteAccountant
from fedecho.privacy.compat import check_sample_dp
from fedecho.privacy.dpsgd import SitePrivacy

__all__ = ["SiteAccountant", "SitePrivacy", "check_sample_dp"]
