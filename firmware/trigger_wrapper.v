`timescale 1 ns / 1 ps
// l1forge trigger wrapper for {{CORE}}: one event per clock (II = 1), fixed latency of
// {{LATENCY}} clock(s) from in_valid/in_data to out_valid/out_data. Buses follow packing.json.
// rst is synchronous and active high: it drops every event in flight (out_valid stays low
// for the next {{LATENCY}} clock(s) unless new events enter); the data path is not reset.
// out_data is only meaningful while out_valid is high.
module {{NAME}}_trigger (
{{TRIGGER_PORTS}}
);
    localparam integer LATENCY = {{LATENCY}};

{{VALID_PIPE}}

    {{CORE}} u_core (
        .clk(clk),
        .in_data(in_data),
        .out_data(out_data)
    );
endmodule
