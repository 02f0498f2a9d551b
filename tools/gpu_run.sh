#!/bin/bash
# tools/gpu_run.sh: build, test and bench tpla on a GPU machine in one go. Everything goes to a few
# files under $OUT (default ./out): log.txt (all output), bench.csv, train.log, tiny.tar.* (the trained
# model, in parts under 16 MB); a short summary is printed last.
#   tools/gpu_run.sh train test run kernel sanitize rank2 rank4 profile bench2 rep bench4 moe
#     train    train the default model (tools/train_tiny.py) on the last GPU, in the background
#     test     make test (every GPU check on the GPUs present)
#     run      make run (the default model on every GPU)
#     kernel   the decode attention kernel at 32K context, on every shape of the rank benches: 512+64 with
#              16, 32, 64 and 128 heads; 64 and 128 heads over 256+64; 128 over 128+64; batch 32 (16 on a
#              card under 100 GB, where 128 heads at batch 32 do not fit). With FLASHMLA=DIR (a directory
#              holding FlashMLA's sm90 decode kernel and a harness whose build_and_run.sh takes --case
#              B,T,HQ; its build/bench_flashmla is used if it is there), FlashMLA runs the 512+64 shapes too.
#              With BASE="DIR .." (other checkouts of tpla: an earlier commit, a variant of the kernel), each
#              is built and each shape runs on every build, one after the other, in the same call
#     sanitize compute-sanitizer's racecheck and synccheck on the kernel check (./test attention)
#     rank2    one GPU runs rank 0 of a 2-GPU layout (-R 2, collectives left out): dsv3 and kimik2, MLA-TP,
#              TPLA g = 2 and DCP K = 2, contexts 1K..32K, largest batch each
#     rank4    the same for a 4-GPU layout, g = 4 (DCP K = 4), at 1K, 4K and 32K
#     profile  Nsight Compute on one launch of the kernel in each mode and of the seesaw kernel (stall reasons, pipe use)
#     bench2   dsv3 and kimik2 on 2 GPUs, g = 2, contexts 1K..32K, largest batch each
#     rep      the same at 32K with W_UQ and W_O replicated (-w rep)
#     bench4   dsv3 and kimik2 on 4 GPUs, g = 4 and g = 2
#     moe      on one GPU, v2lite (DeepSeek-V2-Lite, random weights): decode at 4K for batches 1, 8, 64, 256
#              and a 4096-token prefill; a table of step times and "x floor", and each run's MoE breakdown
#              (a MoE layer's launches alone, the expert products in every tile shape)
set -u -o pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
LOG="$OUT/log.txt"
ngpu=$(nvidia-smi -L | wc -l)
nvidia-smi --query-gpu=index,name,memory.total,clocks.max.sm,clocks.max.mem --format=csv > "$LOG"
nvidia-smi topo -m >> "$LOG" 2>&1
make -j16 >> "$LOG" 2>&1 || { tail -30 "$LOG"; exit 1; }
short=$(grep -E '^nvcc (not found|found but no NCCL)' "$LOG")   # a build short of the multi-GPU engine says so first
summary=${short:+$short$'\n'}
bench() {   # bench NAME ARGS..: one ./run -m bench (or $RUN), its table into the log, its CSV into bench.csv
    local name=$1 run=${RUN:-./run}; shift
    echo "=== $run $name -m bench $*" >> "$LOG"
    timeout ${BENCH_TIMEOUT:-300} $run $name -m bench "$@" >> "$LOG" 2>&1 || echo "bench $name $*: exit $?" >> "$LOG"
    local csv=$(ls -t bench_*.csv 2>/dev/null | head -1)
    [ -n "$csv" ] && { cat "$csv" >> "$OUT/bench.csv"; rm -f bench_*.csv; }
}
for step in "$@"; do
    t0=$(date +%s)
    echo "=== $step" >> "$LOG"
    case $step in
    train)
        ( CUDA_VISIBLE_DEVICES=$((ngpu - 1)) python3 tools/train_tiny.py --out /tmp/tiny > "$OUT/train.log" 2>&1
          ./convert /tmp/tiny /tmp/tiny/tiny.bin >> "$OUT/train.log" 2>&1
          tar cf /tmp/tiny.tar -C /tmp tiny && split -b 15M /tmp/tiny.tar "$OUT/tiny.tar." ) &
        train_pid=$! ;;
    test)
        timeout ${TEST_TIMEOUT:-300} ./test >> "$LOG" 2>&1
        summary+="test: $(tail -1 "$LOG")"$'\n'
        summary+="$(grep -E 'FAIL|error' "$LOG" | head -20)"$'\n' ;;
    run)
        timeout 300 make run >> "$LOG" 2>&1 || echo "make run: exit $?" >> "$LOG"
        summary+="$(grep -E 'GPU|tok/s|exit' "$LOG" | tail -4)"$'\n' ;;
    kernel)
        kb=32; [ "$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)" -lt 100000 ] && kb=16
        if [ -n "${FLASHMLA:-}" ] && [ ! -x "$FLASHMLA/build/bench_flashmla" ]; then
            ( cd "$FLASHMLA" && BUILD_ONLY=1 NVCC_THREADS=4 ./build_and_run.sh > "$OUT/flashmla_build.log" 2>&1 ) &
            fm_pid=$!
        fi
        # (MLA-TP / TPLA / DCP rows: 16/16 heads over 512; 128/128 over 512; 32 over 512 / 64 over 256 / 64 over
        #  512; 64 over 512 / 128 over 256 / 128 over 512; 32 over 512 / 128 over 128 / 128 over 512)
        pids=() bases=""   # the builds that succeed (one that fails is not run: its ./run may be stale)
        for d in ${BASE:-}; do make -C "$d" -j8 bin > "$d/build.log" 2>&1 & pids+=($!); done
        i=0
        for d in ${BASE:-}; do
            if wait ${pids[i]}; then bases+=" $d"; else { echo "BASE $d: build failed, not run"; tail -20 "$d/build.log"; } >> "$LOG"; fi
            i=$((i + 1))
        done
        for spec in "dsv3-h16 -K 1 -g 1" "dsv3 -K 1 -g 1" "kimik2 -R 2 -g 2" "dsv3 -R 2 -g 2" "dsv3 -R 4 -g 4"; do
            bench $spec -b $kb -l 32768 -n 3
            for d in $bases; do RUN="$d/run" bench $spec -b $kb -l 32768 -n 3; done
        done
        summary+="kernel, batch $kb, 32K: ctx scheme batch step_ms tok/s attn_ms share GB/s %copy TFLOP/s"$'\n'
        summary+="$(sed -n '/^=== kernel$/,$p' "$LOG" | grep -E '^=== .*run |^ +32768 (MLA-TP|TPLA|DCP) |^BASE ')"$'\n'
        if [ -n "${FLASHMLA:-}" ]; then
            [ -n "${fm_pid:-}" ] && wait $fm_pid
            "$FLASHMLA"/build/bench_flashmla --case $kb,32768,16 --case $kb,32768,32 --case $kb,32768,64 \
                --case $kb,32768,128 > "$OUT/flashmla.log" 2>&1 || tail -5 "$OUT/flashmla_build.log"
            summary+="FlashMLA, same card (ms a layer; tpla's attn ms above is 61 layers):"$'\n'"$(grep -E '^ +[0-9]+ +[0-9]+ +[0-9]+ +[0-9]+ \|' "$OUT/flashmla.log")"$'\n'
        fi ;;
    sanitize)
        for tool in racecheck synccheck; do
            timeout ${SAN_TIMEOUT:-240} compute-sanitizer --tool $tool --error-exitcode 3 ./test attention > "$OUT/sanitize_$tool.txt" 2>&1
            summary+="compute-sanitizer $tool: exit $?, $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|passed' "$OUT/sanitize_$tool.txt" | tr '\n' ' ')"$'\n'
        done ;;
    rank2)
        for s in dsv3 kimik2; do bench $s -R 2 -g 2 -n 5; done
        summary+="$(grep -E 'TPLA/MLA|bench .*exit|error' "$LOG" | tail -12)"$'\n' ;;
    rank4)
        for s in dsv3 kimik2; do bench $s -R 4 -g 4 -n 5 -l 1024,4096,32768; done
        summary+="$(grep -E 'TPLA/MLA|bench .*exit|error' "$LOG" | tail -6)"$'\n' ;;
    profile)
        ncu_run() {   # NAME KERNEL-REGEX BENCH-ARGS..: one launch of the kernel, under Nsight Compute
            local name=$1 re=$2; shift 2
            timeout ${NCU_TIMEOUT:-150} ncu --clock-control none --kernel-name-base mangled --kernel-name "regex:$re" --launch-skip 2 \
                --launch-count 1 --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats \
                --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum.pct_of_peak_sustained_elapsed" \
                ./run "$@" -m bench -b 32 -l 8192 -n 1 > "$OUT/ncu_$name.txt" 2>&1
            summary+="--- $name: $(grep -E 'Duration|Compute \(SM\) Throughput|DRAM Throughput|Issue Slots Busy' \
                "$OUT/ncu_$name.txt" | awk '{printf "%s %s, ", $1, $NF}')"$'\n'
            summary+="tensor pipe active $(grep -E '^ +sm__pipe_tensor_op_hmma_cycles_active' "$OUT/ncu_$name.txt" | awk '{print $NF}')%, shared-memory wavefronts $(grep -E '^ +l1tex__data_pipe_lsu_wavefronts_mem_shared.sum' "$OUT/ncu_$name.txt" | awk '{print $NF}')%"$'\n'
            summary+="$(grep -E 'issue_stalled_' "$OUT/ncu_$name.txt" | awk '{print $NF, $1}' | sort -rn | head -5 |
                sed 's/smsp__average_warps_issue_stalled_//; s/_per_issue_active.ratio//' | tr '\n' ' ')"$'\n'
        }
        ncu_run heads_g2 '_Z23decode_attention_kernelILi0ELi4E' dsv3 -R 2 -g 2
        ncu_run heads_g4 '_Z23decode_attention_kernelILi0ELi2E' dsv3 -R 4 -g 4
        ncu_run stream '_Z23decode_attention_kernelILi1ELi4E' kimik2 -R 2 -g 2
        ncu_run seesaw '_Z23decode_attention_seesaw' dsv3 -K 1 -g 1 ;;
    bench2)
        for s in dsv3 kimik2; do bench $s -K 2 -g 2 -n 5; done
        summary+="$(grep -E 'TPLA/MLA|bench .*exit|error' "$LOG" | tail -14)"$'\n' ;;
    rep)
        for s in dsv3 kimik2; do bench $s -K 2 -g 2 -w rep -n 5 -l 32768; done
        summary+="$(grep -E 'TPLA/MLA|bench .*exit|error' "$LOG" | tail -2)"$'\n' ;;
    bench4)
        for s in dsv3 kimik2; do for g in 4 2; do bench $s -K 4 -g $g -n 5 -l ${CTX4:-1024,8192,32768}; done; done
        summary+="$(grep -E 'TPLA/MLA|bench .*exit|error' "$LOG" | tail -14)"$'\n' ;;
    moe)
        table="v2lite on 1 GPU, 4K context  batch   step ms  x floor   attn ms  rest x"$'\n'
        parts=""
        for b in 1 8 64 256; do
            n=$(wc -l < "$LOG")
            CUDA_VISIBLE_DEVICES=0 bench v2lite -K 1 -b $b -l 4096 -n 10
            row=$(tail -n +$((n + 1)) "$LOG" | grep -E '^ +4096 MLA-TP ' | tail -1)
            table+="$(printf '%-28s %5s' "routed experts" $b) $(echo "${row:-(failed)}" | awk 'NF >= 12 {printf "%9s %8s %9s %7s", $4, $11, $6, $12; next} {print}')"$'\n'
            parts+="$(tail -n +$((n + 1)) "$LOG" | grep -E '^    (MoE layer|experts in)')"$'\n'
        done
        n=$(wc -l < "$LOG")
        CUDA_VISIBLE_DEVICES=0 bench v2lite -K 1 -k 4096
        table+="prefill: $(tail -n +$((n + 1)) "$LOG" | grep -E '^prefill ' | tail -1)"$'\n'
        parts+="$(tail -n +$((n + 1)) "$LOG" | grep -E '^    (MoE layer|experts in)')"$'\n'
        summary+="$table$parts" ;;
    esac
    summary+="[$step: $(( $(date +%s) - t0 )) s]"$'\n'
done
if [ -n "${train_pid:-}" ]; then
    wait $train_pid
    summary+="train: $(grep -iE 'held-out' "$OUT/train.log" | tail -2)"$'\n'
fi
printf '%s' "$summary" | tee -a "$LOG"
