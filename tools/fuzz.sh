#!/bin/bash
# tools/fuzz.sh: damages a checkpoint at random and runs every mode on it under the sanitizer build.
#   make asan && tools/fuzz.sh [TRIES [SEED]]       (default 1000 tries, seed 1; about 0.8 s a try)
# Each try takes one of the two test fixtures (V3 and V2 style) and does one of: sets a config field
# of the header to an edge value (0, -1, 2^31-1, a power of two, a float NaN, ...), flips random bytes
# of the header or of the tokenizer block, or cuts the file short. When the damaged config is one run
# accepts but the file is then the wrong size, the file is resized to what the config needs (run's
# own message says how much), so the damaged config reaches the engine and not only the size check.
# Then tokenize, generate (MLA, TPLA with Hadamard and PCA), logits (-o) and ppl run on it, each
# under a 60-second timeout. A clean outcome is exit 0, or exit 1 with an "error:" message and no
# output file left. Anything else (a sanitizer report, a crash, a timeout) is a finding: the input
# and the command are kept in asan/fuzz-SEED/, and the summary counts them.
set -u
tries=${1:-1000}; RANDOM=${2:-1}; seed=${2:-1}
dir=asan/fuzz-$seed
[ -x asan/run ] && [ -x asan/convert ] || { echo "build the sanitizer binaries first: make asan"; exit 1; }
rm -rf "$dir"; mkdir -p "$dir"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # one core per fuzz loop: run several seeds side by side
export ASAN_OPTIONS=exitcode=66:log_path=$PWD/$dir/report UBSAN_OPTIONS=exitcode=66:print_stacktrace=1:log_path=$PWD/$dir/report
for b in v3 v2; do asan/convert tests/data/$b "$dir/$b.bin" > /dev/null || exit 1; done
head -c 400 tests/data/tok.txt > "$dir/text.txt"     # calibration and ppl text: 240 tokens
echo "1 2 3 4 5 6 7 8" > "$dir/ids.txt"
f=$dir/input.bin

r32() { echo $(( (RANDOM << 15 | RANDOM) )); }
put32() {   # put32 OFFSET HEX8 (big-endian hex digits, written little-endian)
    local h=$2
    printf "\\x${h:6:2}\\x${h:4:2}\\x${h:2:2}\\x${h:0:2}" | dd of="$f" bs=1 seek="$1" conv=notrunc status=none
}
flip() {    # flip FROM LEN COUNT: COUNT random bytes in [FROM, FROM + LEN) set to random values
    for ((k = 0; k < $3; k++)); do
        printf "\\x$(printf %02x $((RANDOM % 256)))" | dd of="$f" bs=1 seek=$(($1 + $(r32) % $2)) conv=notrunc status=none
    done
}
ints=(0 1 -1 2 3 4 7 8 16 31 32 63 64 65 127 128 255 256 511 512 513 1024 4096 65536 1048576 2147483647 -2147483648)
floats=(00000000 80000000 bf800000 00000001 0da24260 7149f2ca 7fc00000 7f800000 ff800000 3f000000 40000000 477fe000)

declare -A found
findings=0; clean=0; runs=0
for ((t = 1; t <= tries; t++)); do
    base=$dir/$([ $((RANDOM % 2)) = 0 ] && echo v3 || echo v2).bin
    cp "$base" "$f"
    tok=$(od -An -t d4 -j 112 -N 4 "$f" | tr -d ' ')
    case $((RANDOM % 6)) in
    0|1) v=${ints[$((RANDOM % ${#ints[@]}))]}                         # an int field (27 of them)
         put32 $((8 + 4 * (RANDOM % 27))) $(printf %08x $((v & 0xffffffff))); what="int field" ;;
    2)   put32 $((8 + 4 * (27 + RANDOM % 8))) ${floats[$((RANDOM % ${#floats[@]}))]}; what="float field" ;;
    3)   flip 8 140 $((1 + RANDOM % 4)); what="header bytes" ;;
    4)   if [ "$tok" -gt 0 ]; then flip 512 "$tok" $((1 + RANDOM % 8)); what="tokenizer bytes"
         else flip 8 140 1; what="header bytes"; fi ;;
    5)   truncate -s $(( $(r32) % $(stat -c %s "$f") )) "$f"; what="cut short" ;;
    esac
    # a config run accepts but a file of the wrong size: make it the size the config needs, up to 3 MB
    # (5 times the fixture: larger models are valid too, but slow under the sanitizers)
    need=$(asan/run "$f" -d cpu -m tokenize -f "$dir/ids.txt" 2>&1 >/dev/null | grep -o 'the config needs [0-9]*' | grep -o '[0-9]*$')
    [ -n "$need" ] && [ "$need" -le 3000000 ] && truncate -s "$need" "$f" && what="$what, resized"
    for args in "-m tokenize -f $dir/text.txt" "-i def -n 4 -t 0" "-i def -n 4 -P tpla -T hadamard -g 2" \
                "-i def -n 4 -t 0 -P tpla -T pca -g 4 -c $dir/text.txt" \
                "-m logits -f $dir/ids.txt -k 3 -P tpla -g 2 -o $dir/out.f32" \
                "-m ppl -f $dir/text.txt -n 48 -k 8 -P tpla -g 2 -T pca -r local,global -c $dir/text.txt"; do
        rm -f "$dir/out.f32" "$dir/out.f32.tmp"
        timeout 60 asan/run "$f" -d cpu $args > /dev/null 2> "$dir/stderr.txt"
        rc=$?; runs=$((runs + 1))
        left=$(ls "$dir"/out.f32* 2>/dev/null)
        if [ $rc = 0 ] || { [ $rc = 1 ] && grep -q '^error: ' "$dir/stderr.txt" && [ -z "$left" ]; }; then
            clean=$((clean + 1)); continue
        fi
        findings=$((findings + 1))
        if [ $rc = 124 ]; then kind=timeout; elif [ $rc = 66 ]; then kind=sanitizer
        elif [ $rc = 1 ] && [ -n "$left" ]; then kind="file left"; else kind="exit $rc"; fi
        kind="$kind (${what%, resized} mutation)"
        found[$kind]=$(( ${found[$kind]:-0} + 1 ))
        cp "$f" "$dir/finding$findings.bin"
        echo "asan/run $dir/finding$findings.bin -d cpu $args    # $kind, $what" | tee -a "$dir/findings.txt"
        tail -3 "$dir/stderr.txt" | sed 's/^/    /' >> "$dir/findings.txt"
    done
    [ $((t % 100)) = 0 ] && echo "$t tries, $runs runs: $clean clean, $findings findings"
done
echo "seed $seed: $tries tries, $runs runs: $clean clean, $findings findings$(for k in "${!found[@]}"; do printf ', %s %s' "${found[$k]}" "$k"; done)"
ls "$dir"/report.* > /dev/null 2>&1 && echo "sanitizer reports: $dir/report.*"
[ $findings = 0 ]
