"""Deployment on real Flower infrastructure: a federation's certificates and keys, the SuperLink and
SuperNode commands, submitting and following runs (``fedecho-server`` / ``fedecho-client``)."""
