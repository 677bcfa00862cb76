"""l1forge.firmware: HLS projects, Verilog generation, wrappers, cocotb benches and board driver."""
