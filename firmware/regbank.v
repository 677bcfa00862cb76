`timescale 1 ns / 1 ps
// l1forge run-time register bank of {{NAME}}: AXI4-Lite slave (32-bit words, byte addresses,
// map in packing.json "registers"), shadow and active parameter sets, the input scaling stage
// and the seed comparators. Writes land in the shadow set; writing 1 to COMMIT makes it active:
// the offsets and shifts at the edge that performs the COMMIT write (events captured at later
// edges use them), the thresholds {{LATENCY}} edges later, when the first such event's
// score reaches the comparators; until then STATUS[0] is set and further writes wait.
// A value outside its register's range, a write to a read-only or unmapped address, a partial
// or unaligned write, or COMMIT != 1 gets SLVERR and changes nothing.
// axil_aresetn (synchronous, active low) restores the build's parameters and VERSION 0.
// verilator lint_off UNUSEDSIGNAL
module {{NAME}}_regbank (
    input  wire clk,
    input  wire axil_aresetn,
{{AXIL_PORTS}}
{{DATA_PORTS}}    input  wire [{{SCORE_BITS}}-1:0] score,
    output wire [{{N_SEEDS}}-1:0] seed_bits
);
    localparam integer LATENCY = {{LATENCY}};

{{DECLS}}

    // ---- write channel: address and data may arrive in either order ---------------------
    reg aw_full;
    reg [11:0] aw_addr;
    reg w_full;
    reg [31:0] w_data;
    reg [3:0] w_strb;
    reg bvalid_r;
    reg [1:0] bresp_r;
    reg [31:0] version;
    reg [LATENCY-1:0] commit_sr;  // commit_sr[k]: the commit was k edges ago
    wire busy = |commit_sr;
    assign s_axil_awready = !aw_full && !busy;
    assign s_axil_wready = !w_full && !busy;
    assign s_axil_bvalid = bvalid_r;
    assign s_axil_bresp = bresp_r;
    wire do_write = aw_full && w_full && !bvalid_r && !busy;
    wire w_ok = (w_strb == 4'hf) && (aw_addr[1:0] == 2'b00);
{{RANGES}}
    wire hit_ok = {{WRITE_OK}};
    wire commit_now = do_write && w_ok && (aw_addr == 12'h00c) && (w_data == 32'd1);

    always @(posedge clk) begin
        if (!axil_aresetn) begin
            aw_full <= 1'b0;
            w_full <= 1'b0;
            bvalid_r <= 1'b0;
            bresp_r <= 2'b00;
            aw_addr <= 12'h000;
            w_data <= 32'd0;
            w_strb <= 4'h0;
            version <= 32'd0;
            commit_sr <= {LATENCY{1'b0}};
{{RESETS}}
        end else begin
            if (s_axil_awvalid && s_axil_awready) begin
                aw_full <= 1'b1;
                aw_addr <= s_axil_awaddr;
            end
            if (s_axil_wvalid && s_axil_wready) begin
                w_full <= 1'b1;
                w_data <= s_axil_wdata;
                w_strb <= s_axil_wstrb;
            end
            if (do_write) begin
                aw_full <= 1'b0;
                w_full <= 1'b0;
                bvalid_r <= 1'b1;
                bresp_r <= (w_ok && hit_ok) ? 2'b00 : 2'b10;
            end else if (bvalid_r && s_axil_bready) begin
                bvalid_r <= 1'b0;
            end
            commit_sr <= {{SR_NEXT}};
            if (commit_now) version <= version + 32'd1;
{{SHADOW_WRITES}}
{{COMMIT_COPY}}
        end
    end

    // ---- read channel -------------------------------------------------------------------
    reg rvalid_r;
    reg [31:0] rdata_r;
    reg [1:0] rresp_r;
    reg [31:0] rd_next;
    reg rd_hit;
    assign s_axil_arready = !rvalid_r;
    assign s_axil_rvalid = rvalid_r;
    assign s_axil_rdata = rdata_r;
    assign s_axil_rresp = rresp_r;

    always @(*) begin
        rd_hit = 1'b1;
        case (s_axil_araddr)
{{READS}}
            default: begin
                rd_next = 32'd0;
                rd_hit = 1'b0;
            end
        endcase
    end

    always @(posedge clk) begin
        if (!axil_aresetn) begin
            rvalid_r <= 1'b0;
            rdata_r <= 32'd0;
            rresp_r <= 2'b00;
        end else if (s_axil_arvalid && s_axil_arready) begin
            rvalid_r <= 1'b1;
            rdata_r <= rd_next;
            rresp_r <= rd_hit ? 2'b00 : 2'b10;
        end else if (rvalid_r && s_axil_rready) begin
            rvalid_r <= 1'b0;
        end
    end

    // ---- seed comparators: bit i = score > THRESHOLD[i] (the menu's strict comparison) ---
{{COMPARATORS}}
{{SCALER}}endmodule
// verilator lint_on UNUSEDSIGNAL
