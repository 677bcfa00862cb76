"""l1forge.offline: the detector/network co-design optimizer."""
