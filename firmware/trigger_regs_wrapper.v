`timescale 1 ns / 1 ps
// l1forge trigger wrapper for {{CORE}} with the run-time register bank {{NAME}}_regbank:
// one event per clock (II = 1), fixed latency of {{LATENCY}} clock(s) from in_valid/in_data to
// out_valid/out_data (the scaling stage, if any, is the first stage; {{CORE_LATENCY}} in the
// core). out_data = {seed_bits, core outputs}: seed bit i is the core's first output field
// (the score) > THRESHOLD[i]. Buses and the register map follow packing.json.
// rst is synchronous and active high: it drops every event in flight (the data path and the
// registers are not reset); axil_aresetn resets the register bank.
module {{NAME}}_trigger (
    input  wire clk,
    input  wire rst,
    input  wire in_valid,
    input  wire [{{IN_BITS}}-1:0] in_data,
    output wire out_valid,
    output wire [{{OUT_BITS}}-1:0] out_data,
    input  wire axil_aresetn,
{{AXIL_PORTS}}
);
    localparam integer LATENCY = {{LATENCY}};

    reg [LATENCY-1:0] valid_pipe;
    integer stage;

    always @(posedge clk) begin
        if (rst) begin
            valid_pipe <= {LATENCY{1'b0}};
        end else begin
            valid_pipe[0] <= in_valid;
            for (stage = 1; stage < LATENCY; stage = stage + 1) begin
                valid_pipe[stage] <= valid_pipe[stage - 1];
            end
        end
    end

    assign out_valid = valid_pipe[LATENCY-1];

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
