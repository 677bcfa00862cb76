`timescale 1 ns / 1 ps
// l1forge trigger wrapper for {{CORE}} with the run-time register bank {{NAME}}_regbank:
// one event per clock (II = 1), fixed latency of {{LATENCY}} clock(s) from in_valid/in_data to
// out_valid/out_data (the scaling stage, if any, is the first stage; {{CORE_LATENCY}} in the
// core). out_data = {seed_bits, core outputs}: seed bit i is the core's first output field
// (the score) > THRESHOLD[i]. Buses and the register map follow packing.json.
// rst is synchronous and active high: it drops every event in flight (the data path and the
// registers are not reset); axil_aresetn resets the register bank.
module {{NAME}}_trigger (
{{TRIGGER_PORTS}},
    input  wire axil_aresetn,
{{AXIL_PORTS}}
);
    localparam integer LATENCY = {{LATENCY}};

{{VALID_PIPE}}

    wire [{{CORE_IN_BITS}}-1:0] core_in;
    // verilator lint_off UNUSEDSIGNAL
    wire [{{CORE_OUT_BITS}}-1:0] core_out;
    // verilator lint_on UNUSEDSIGNAL
    wire [{{N_SEEDS}}-1:0] seed_bits;
{{CORE_IN_ASSIGN}}
    {{NAME}}_regbank u_regs (
        .clk(clk),
        .axil_aresetn(axil_aresetn),
{{SCALE_CONNECTS}}        .score(core_out[{{SCORE_BITS}}-1:0]),
        .seed_bits(seed_bits),
{{AXIL_CONNECTS}}
    );

    {{CORE}} u_core (
        .clk(clk),
        .in_data(core_in),
        .out_data(core_out)
    );

    assign out_data = {seed_bits, core_out};
endmodule
