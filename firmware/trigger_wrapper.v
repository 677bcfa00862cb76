`timescale 1 ns / 1 ps
// l1forge trigger wrapper for {{CORE}}: one event per clock (II = 1), fixed latency of
// {{LATENCY}} clock(s) from in_valid/in_data to out_valid/out_data. Buses follow packing.json.
// rst is synchronous and active high: it drops every event in flight (out_valid stays low
// for the next {{LATENCY}} clock(s) unless new events enter); the data path is not reset.
// out_data is only meaningful while out_valid is high.
module {{NAME}}_trigger (
    input  wire clk,
    input  wire rst,
    input  wire in_valid,
    input  wire [{{IN_BITS}}-1:0] in_data,
    output wire out_valid,
    output wire [{{OUT_BITS}}-1:0] out_data
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

    {{CORE}} u_core (
        .clk(clk),
        .in_data(in_data),
        .out_data(out_data)
    );
endmodule
