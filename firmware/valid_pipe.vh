    // The valid shift register (firmware/valid_pipe.vh, shared by the trigger wrappers):
    // in_valid reaches out_valid LATENCY clocks later; a synchronous rst empties the pipeline.
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
