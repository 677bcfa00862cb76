"""l1forge.models: quantized networks, the qnet IR and its bit-exact emulator."""
