"""Peer implementations run in their own virtual environments (``bench/peers/setup_rectools.sh``)."""
