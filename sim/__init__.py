"""l1forge.sim: Pythia 8 events reduced to Level-1 trigger objects, and calorimeter simulation."""
