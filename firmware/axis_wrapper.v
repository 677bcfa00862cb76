`timescale 1 ns / 1 ps
// l1forge AXI4-Stream wrapper for {{NAME}}_trigger, for DMA on boards.
// Slave side: each event is {{IN_BEATS}} beat(s) of {{BEAT}} bits, least significant beat first,
// holding the packed input bus of packing.json zero-padded to whole beats. Master side: each
// result is {{OUT_BEATS}} beat(s), TKEEP all ones. TLAST on the last input beat of an event is
// carried through and set on the last output beat of that event's result, so DMA frames keep
// their boundaries. Back-pressure: s_axis_tready drops while the {{DEPTH}}-deep result FIFO
// could not hold every event already accepted, so no result is ever lost or duplicated.
// aresetn is synchronous and active low; it drops partial events, in-flight events and
// buffered results.
module {{NAME}}_axis (
    input  wire aclk,
    input  wire aresetn,
{{AXIL_PORTS}}    input  wire [{{BEAT}}-1:0] s_axis_tdata,
    input  wire s_axis_tvalid,
    output wire s_axis_tready,
    input  wire s_axis_tlast,
    output wire [{{BEAT}}-1:0] m_axis_tdata,
    output wire [{{BEAT}}/8-1:0] m_axis_tkeep,
    output wire m_axis_tvalid,
    input  wire m_axis_tready,
    output wire m_axis_tlast
);
    localparam integer IN_BITS = {{IN_BITS}};
    localparam integer OUT_BITS = {{OUT_BITS}};
    localparam integer BEAT = {{BEAT}};
    localparam integer LATENCY = {{LATENCY}};
    localparam integer DEPTH = {{DEPTH}};
    localparam integer AW = {{AW}};

    localparam [AW:0] DEPTH_W = {{DEPTH_W}};

    wire rst = ~aresetn;

    // ---- slave side: collect the beats of one event --------------------------------------
    reg [{{IN_CW}}-1:0] in_beat;
    reg [AW:0] used;  // events accepted and not yet fully sent (in flight + in the FIFO)
    wire in_fire = s_axis_tvalid && s_axis_tready;
    wire in_last_beat = (in_beat == {{IN_CW}}'d{{IN_LAST}});
    wire in_done = in_fire && in_last_beat;
    // verilator lint_off UNUSEDSIGNAL
    wire [{{IN_BEATS}}*BEAT-1:0] event_bus;
    // verilator lint_on UNUSEDSIGNAL
{{IN_ASSEMBLE}}
    assign s_axis_tready = (used < DEPTH_W);

    always @(posedge aclk) begin
        if (rst) begin
            in_beat <= {{IN_CW}}'d0;
        end else if (in_fire) begin
            in_beat <= in_last_beat ? {{IN_CW}}'d0 : in_beat + {{IN_CW}}'d1;
        end
    end

    // ---- the fixed-latency pipeline, with TLAST carried beside it -------------------------
    wire core_valid;
    wire [OUT_BITS-1:0] core_data;
    reg [LATENCY-1:0] last_pipe;
    integer stage;

    always @(posedge aclk) begin
        last_pipe[0] <= s_axis_tlast;
        for (stage = 1; stage < LATENCY; stage = stage + 1) begin
            last_pipe[stage] <= last_pipe[stage - 1];
        end
    end

    {{NAME}}_trigger u_trigger (
        .clk(aclk),
        .rst(rst),
        .in_valid(in_done),
        .in_data(event_bus[IN_BITS-1:0]),
        .out_valid(core_valid),
        .out_data(core_data){{AXIL_CONNECTS}}
    );

    // ---- result FIFO --------------------------------------------------------------------
    reg [OUT_BITS:0] fifo_mem [0:DEPTH-1];
    reg [AW-1:0] wr_ptr;
    reg [AW-1:0] rd_ptr;
    reg [AW:0] fifo_count;
    wire [OUT_BITS:0] head = fifo_mem[rd_ptr];
    reg [{{OUT_CW}}-1:0] out_beat;
    wire out_last_beat = (out_beat == {{OUT_CW}}'d{{OUT_LAST}});
    wire out_fire = m_axis_tvalid && m_axis_tready;
    wire pop = out_fire && out_last_beat;
    wire [{{OUT_BEATS}}*BEAT-1:0] head_bus = {{HEAD_PAD}};

    always @(posedge aclk) begin
        if (core_valid) begin
            fifo_mem[wr_ptr] <= {last_pipe[LATENCY-1], core_data};
        end
    end

    always @(posedge aclk) begin
        if (rst) begin
            wr_ptr <= {AW{1'b0}};
            rd_ptr <= {AW{1'b0}};
            fifo_count <= {(AW+1){1'b0}};
            used <= {(AW+1){1'b0}};
            out_beat <= {{OUT_CW}}'d0;
        end else begin
            if (core_valid) wr_ptr <= wr_ptr + {{AW_ONE}};
            if (pop) rd_ptr <= rd_ptr + {{AW_ONE}};
            fifo_count <= fifo_count + {{(AW){1'b0}}, core_valid} - {{(AW){1'b0}}, pop};
            used <= used + {{(AW){1'b0}}, in_done} - {{(AW){1'b0}}, pop};
            if (out_fire) out_beat <= out_last_beat ? {{OUT_CW}}'d0 : out_beat + {{OUT_CW}}'d1;
        end
    end

    // ---- master side ----------------------------------------------------------------------
    assign m_axis_tvalid = (fifo_count != {(AW+1){1'b0}});
    assign m_axis_tlast = head[OUT_BITS] && out_last_beat;
    assign m_axis_tkeep = {(BEAT/8){1'b1}};
{{OUT_SELECT}}
endmodule
