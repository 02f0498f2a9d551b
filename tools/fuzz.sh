#!/bin/bash
# tools/fuzz.sh: damages the inputs at random and runs the programs on them under the sanitizer build.
#   make asan && tools/fuzz.sh [TRIES [SEED]]       checkpoints (default 1000 tries, seed 1; about 0.8 s a try)
#   make asan && tools/fuzz.sh hf [TRIES [SEED]]    HF folders, output paths, signals (about 0.3 s a try)
# The checkpoint pass: each try takes one of the two test fixtures (V3 and V2 style) and does one of: sets a config field
# of the header to an edge value (0, -1, 2^31-1, a power of two, a float NaN, ...), flips random bytes
# of the header or of the tokenizer block, or cuts the file short. When the damaged config is one run
# accepts but the file is then the wrong size, the file is resized to what the config needs (run's
# own message says how much), so the damaged config reaches the engine and not only the size check.
# Then tokenize, generate (MLA, TPLA with Hadamard and PCA), logits (-o) and ppl run on it, each
# under a 60-second timeout. A clean outcome is exit 0, or exit 1 with an "error:" message and no
# output file left. Anything else (a sanitizer report, a crash, a timeout) is a finding: the input
# and the command are kept in asan/fuzz-SEED/, and the summary counts them.
#
# The hf pass starts each try from a copy of the V3 fixture's folder (a third of the time with its
# weights as a shard named by model.safetensors.index.json) and does one of:
# - 1 to 3 structure-aware changes of one JSON file (config.json, tokenizer.json, tokenizer_config.json,
#   the index, the safetensors header): a member repeated (a key twice), an odd key added (empty,
#   \u0000, a lone surrogate, raw control or invalid UTF-8 bytes, 100 KB long, a known name), a value
#   replaced or an element added (odd numbers: 1e999, 80 digits, 01, 1., NaN, 2^53 + 1; odd strings;
#   a 1 MB string, an array of a million elements, nesting 300 deep, an object of 100,000 keys, the
#   wrong type), a number in the line replaced (data_offsets in the header), a line deleted, the file
#   cut; then convert, and run -m tokenize on what it wrote;
# - convert or run -m logits to an odd output: empty, ., /, a folder, a device, a FIFO, /dev/stdout,
#   each input (config.json, tokenizer.json, the shard, the model, the -f file) by name, by ./, by a
#   symbolic or a hard link, a missing folder, names of 240 and 255 bytes, a dangling link, a name with
#   a space and a newline, a file that is there (replaced), with a file named OUT.tmp beside it;
# - convert or run -m logits ended by a signal (17 kinds) 0 to 99 ms after its start.
# A clean outcome: exit 0 and the output there (what convert wrote loads and tokenizes), or exit 1
# with an "error:" message of at most 4 KB and no output; for a signal, killed by it, or exit 0, and
# any output complete. In every case no temporary is left anywhere and every input is unchanged (the
# bytes of every file but an output that is not an input). Anything else is kept in asan/fuzz-hf-SEED/
# as for the checkpoint pass.
set -u
pass=bin
[ "${1:-}" = hf ] && { pass=hf; shift; }
tries=${1:-1000}; RANDOM=${2:-1}; seed=${2:-1}
dir=asan/fuzz-$seed
[ $pass = hf ] && dir=asan/fuzz-hf-$seed
[ -x asan/run ] && [ -x asan/convert ] || { echo "build the sanitizer binaries first: make asan"; exit 1; }
rm -rf "$dir"; mkdir -p "$dir"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # one core per fuzz loop: run several seeds side by side
export ASAN_OPTIONS=exitcode=66:log_path=$PWD/$dir/report UBSAN_OPTIONS=exitcode=66:print_stacktrace=1:log_path=$PWD/$dir/report
r32() { echo $(( (RANDOM << 15 | RANDOM) )); }
declare -A found
findings=0; clean=0; runs=0
summary() {
    echo "seed $seed: $tries tries, $runs runs: $clean clean, $findings findings$(for k in "${!found[@]}"; do printf ', %s %s' "${found[$k]}" "$k"; done)"
    ls "$dir"/report.* > /dev/null 2>&1 && echo "sanitizer reports: $dir/report.*"
    [ $findings = 0 ]
}
# --- the hf pass (see the top)
json_lines() { sed 's/^{"/{\n"/; s/},"/},\n"/g; s/}}\( *\)$/}\n}\1/'; }   # the one-line safetensors header, a member a line
header() { tail -c +9 "$1" | head -c "$(od -An -tu8 -N8 "$1" | tr -d ' ')"; }
put_header() {   # put_header FILE HEADER: FILE's header replaced by the file HEADER, the data kept
    local h
    h=$(printf %016x "$(stat -c %s "$2")")
    { printf "\\x${h:14:2}\\x${h:12:2}\\x${h:10:2}\\x${h:8:2}\\x${h:6:2}\\x${h:4:2}\\x${h:2:2}\\x${h:0:2}"; cat "$2"
      tail -c +$((9 + $(od -An -tu8 -N8 "$1" | tr -d ' '))) "$1"; } > "$1.new" && mv "$1.new" "$1"
}
pick() { sed -n "$(( $(r32) % $(wc -l < "$1") + 1 ))p" "$1"; }   # a random line of a file
pick_line() {    # pick_line FILE PATTERN: the number of a random line of FILE matching PATTERN, or nothing
    local l=($(grep -a -n -- "$2" "$1" | cut -d: -f1))
    [ ${#l[@]} -gt 0 ] && echo "${l[$(( $(r32) % ${#l[@]} ))]}"
}
mutate() {       # mutate FILE: one structure-aware change of a JSON file written one member per line
    local f=$1 op=$((RANDOM % 7)) L=
    [ -s "$f" ] || return   # an earlier change of this try cut it to nothing (a modulus of 0 would end the pass)
    pick "$pool/keys.txt" > "$pool/k"; pick "$pool/values.txt" > "$pool/v"
    case $op in
    0) L=$(pick_line "$f" '^ *"[^"]*": *') ;;          # the member again: a key twice
    1) L=$(pick_line "$f" '{ *$') ;;                    # an odd key after a {
    2) L=$(pick_line "$f" ': *[^{[ ]') ;;               # the value replaced
    3) L=$(pick_line "$f" '[0-9]') ;;                   # one number of the line replaced (data_offsets, ids, sizes)
    4) L=$(pick_line "$f" '\[ *$') ;;                   # an element after a [
    5) L=$(( $(r32) % $(wc -l < "$f") + 1 )) ;;         # the line deleted
    6) truncate -s $(( $(r32) % $(stat -c %s "$f") )) "$f"; return ;;   # the file cut
    esac
    [ -n "$L" ] || return
    awk -v L="$L" -v op=$op -v kf="$pool/k" -v vf="$pool/v" -v seed=$RANDOM '
        BEGIN { getline K < kf; getline V < vf; srand(seed) }
        NR == L && op == 0 { x = $0; sub(/,? *$/, ",", x); print x }
        NR == L && op == 1 { print; print K ": " V ","; next }
        NR == L && op == 2 { match($0, /: */); c = $0 ~ /, *$/ ? "," : ""; print substr($0, 1, RSTART + RLENGTH - 1) V c; next }
        NR == L && op == 3 {
            at = 0; s = $0
            while (match(s, /[0-9]+(\.[0-9]+)?/)) { pos[++cnt] = at + RSTART; len[cnt] = RLENGTH; at += RSTART + RLENGTH - 1; s = substr(s, RSTART + RLENGTH) }
            j = int(rand() * cnt) + 1; r = substr($0, pos[j], len[j]); k = int(rand() * 14) + 1
            split("0 1 7.9 1e999 01 1. 0.5 2147483648 9007199254740993 100000000", n, " ")
            print substr($0, 1, pos[j] - 1) (k <= 10 ? n[k] : r + int(rand() * 17) - 8) substr($0, pos[j] + len[j]); next }
        NR == L && op == 4 { print; print V ","; next }
        NR == L && op == 5 { next }
        { print }' "$f" > "$f.new" && mv "$f.new" "$f"
}
shard() {        # the folder's weights as one shard named by model.safetensors.index.json
    local s=model-00001-of-00001.safetensors
    mv "$hf/model.safetensors" "$hf/$s"
    { echo '{'; echo '  "metadata": {"total_size": 568000},'; echo '  "weight_map": {'
      header "$hf/$s" | json_lines | grep -o '^"[^"]*":{"dtype"' | sed "s/:{\"dtype\"\$/: \"$s\",/; s/^/    /" | sed '$ s/,$//'
      echo '  }'; echo '}'; } > "$hf/model.safetensors.index.json"
}
ino() { stat -L -c %d:%i "$1" 2> /dev/null; }
is_input() {     # is_input PATH: PATH is (or links to) a file the program reads: the HF folder's, or the model and -f
    local i=$(ino "$1") f
    [ -n "$i" ] || return 1
    for f in $([ $prog = 0 ] && echo "$hf"/* || echo "$w/m.bin $w/ids.txt"); do [ "$(ino "$f")" = "$i" ] && return 0; done
    return 1
}
inputs() {       # the bytes of every file but the output, where that is not an input (it may be made or replaced)
    find "$hf" "$w" -type f ! -path "$skip" -print0 | sort -z | xargs -0 md5sum
}
judge() {        # judge RC OUT: counts the outcome of the last run, keeps a finding
    local rc=$1 o=$2 kind=
    runs=$((runs + 1))
    if [ $rc = 124 ]; then kind=timeout; elif [ $rc = 66 ]; then kind=sanitizer
    elif [ -n "$(find "$dir" -name '*.tmp.??????' | head -1)" ]; then kind="temporary left"
    elif [ "$(inputs)" != "$before" ]; then kind="input changed"
    elif [ $what = signal ]; then
        if [ $rc != 0 ] && [ $rc != $((128 + $(kill -l "$sig"))) ]; then kind="exit $rc"
        elif [ -e "$o" ] && [ "$(stat -c %s "$o")" != "$full" ]; then kind="an incomplete output"; fi
    elif [ $rc = 0 ]; then [ -f "$o" ] || kind="exit 0 without the output"
    elif [ $rc = 1 ]; then
        if ! grep -q '^error: ' "$dir/stderr.txt"; then kind="exit 1 without a message"
        elif [ "$(stat -c %s "$dir/stderr.txt")" -gt 4096 ]; then kind="a message over 4 KB"
        elif [ -z "$existed" ] && [ -e "$o" ]; then kind="output left"; fi
    else kind="exit $rc"; fi
    [ -z "$kind" ] && { clean=$((clean + 1)); return; }
    findings=$((findings + 1))
    kind="$kind ($what)"
    found[$kind]=$(( ${found[$kind]:-0} + 1 ))
    cp -r "$hf" "$dir/finding$findings"
    echo "try $t: $cmd    # $kind; the HF folder: $dir/finding$findings" | tee -a "$dir/findings.txt"
    tail -3 "$dir/stderr.txt" | cut -c1-300 | sed 's/^/    /' >> "$dir/findings.txt"
}
hf_pass() {
    local root=$PWD base=$dir/base hf=$PWD/$dir/hf w=$PWD/$dir/w pool=$dir/pool
    mkdir -p "$pool"
    cp -r tests/data/v3 "$base" && rm "$base/logits.f32" "$base/ids.txt"
    asan/convert "$base" "$dir/ref.bin" > /dev/null || exit 1
    echo "1 2 3 4 5 6 7 8" > "$dir/ids.txt"
    head -c 400 tests/data/tok.txt > "$dir/text.txt"
    { printf '%s\n' '""' '"\u0000"' '"a\u0000b"' '"\ud800"' '"\udfff\ud800"' '"\u001b[2J"' '"__metadata__"' '"hidden_size"' \
          '"vocab"' '"type"' '"model"' '"data_offsets"' '"a"' '"\n"' '"<|endoftext|>"' '"weight_map"' '"add_bos_token"'
      printf '"\001"\n"\303"\n"\355\240\200"\n"\377"\n'
      printf '"%s"\n' "$(head -c 100000 /dev/zero | tr '\0' k)"; } > "$pool/keys.txt"
    { printf '%s\n' 0 -0 1 -1 2 3 7 8 64 512 513 4096 1e999 -1e999 1e-999 0.5 7.9 4.0e0 1E400 -0.0e-0 2147483648 -2147483649 \
          9007199254740993 "0.$(printf '0%.0s' {1..100})1" "$(printf '9%.0s' {1..80})" 01 1. .5 1e 1e+ - +1 0x10 NaN Infinity \
          -Infinity 1_0 '""' '"\u0000"' '"\ud800"' '"\\"' '"\u12"' '"\x41"' '"abc' '"silu"' '"yarn"' '"BPE"' '"ByteLevel"' \
          '"Sequence"' '"F8_E4M3"' '"F16"' '"I64"' '"DeepseekV2ForCausalLM"' null true false '[]' '{}' '[1, 2]' '[0, 8]' '[8, 0]' \
          '[0.5, 8]' '{"a": 1, "a": 2}' '[[[[[[[[[[[]]]]]]]]]]]' '{"type": "ByteLevel"}' '"model.safetensors"' '"../v3.bin"'
      printf '"a\001"\n"\377"\n"\303"\n'
      printf '"%s"\n' "$(head -c 1000000 /dev/zero | tr '\0' s)"
      printf '[%s0]\n' "$(yes 0, | head -n 1000000 | tr -d '\n')"
      printf '%s\n' "$(printf '[%.0s' {1..300})$(printf ']%.0s' {1..300})"
      printf '{%s"k": 0}\n' "$(seq 1 100000 | sed 's/.*/"k&": 0,/' | tr -d '\n')"; } > "$pool/values.txt"
    local sigs=(INT TERM HUP QUIT PIPE ALRM USR1 USR2 XCPU XFSZ VTALRM PROF IO PWR RTMIN RTMIN+5 RTMAX)
    local long240=$(printf 'n%.0s' {1..240}) long255=$(printf 'n%.0s' {1..255}) st out o prog f k rc pid
    for ((t = 1; t <= tries; t++)); do
        rm -rf "$hf" "$w"; mkdir "$w"; cp -r "$base" "$hf"
        cp "$dir/ref.bin" "$w/m.bin"; cp "$dir/ids.txt" "$w/ids.txt"
        [ $((RANDOM % 3)) = 0 ] && shard
        st=$(ls "$hf"/*.safetensors); prog=$((RANDOM % 2)); out=$w/out.bin; existed=
        case $((RANDOM % 5)) in
        0|1|2) what=json
            f=$((RANDOM % 5))
            [ $f = 3 ] && [ ! -e "$hf/model.safetensors.index.json" ] && f=0
            [ $f = 4 ] && printf '{\n  "add_bos_token": false,\n  "bos_token": "<|endoftext|>"\n}\n' > "$hf/tokenizer_config.json"
            local target=("$hf/config.json" "$hf/tokenizer.json" "$st" "$hf/model.safetensors.index.json" "$hf/tokenizer_config.json")
            if [ $f = 2 ]; then header "$st" | json_lines > "$pool/h"; else cp "${target[$f]}" "$pool/h"; fi
            for ((k = RANDOM % 3; k >= 0; k--)); do mutate "$pool/h"; done
            if [ $f = 2 ]; then tr -d '\n' < "$pool/h" > "$pool/h1"; put_header "$st" "$pool/h1"; else cp "$pool/h" "${target[$f]}"; fi
            prog=0; skip=$out; before=$(inputs); cmd="asan/convert $hf $out"
            timeout 60 asan/convert "$hf" "$out" > /dev/null 2> "$dir/stderr.txt"
            rc=$?
            judge $rc "$out"
            if [ $rc = 0 ]; then   # what it wrote loads and tokenizes
                existed=1; cmd="asan/run $out -d cpu -m tokenize -f $dir/text.txt"
                timeout 60 asan/run "$out" -d cpu -m tokenize -f "$dir/text.txt" > /dev/null 2> "$dir/stderr.txt"
                judge $? "$out"
            fi ;;
        3) what=output
            ln -s "$hf/config.json" "$w/cfg.link"; ln "$st" "$w/st.hard"; ln -s m.bin "$w/m.link"; ln "$w/m.bin" "$w/m.hard"
            mkfifo "$w/fifo"; ln -s "$w/nowhere/x" "$w/dangling"; echo mine > "$w/out.bin.tmp"
            [ $((RANDOM % 2)) = 0 ] && echo old > "$w/out.bin"
            local outs=("" . .. / "$w" "$w/" "$hf" "$hf/config.json" "$hf/./config.json" "$hf/tokenizer.json" "$st" "$w/cfg.link"
                        "$w/st.hard" "$w/m.bin" "$w/./m.bin" "$w/m.link" "$w/m.hard" "$w/ids.txt" /dev/null /dev/full /dev/stdout
                        "$w/fifo" "$w/no/such/out.bin" "$w/out.bin" out.bin ./out.bin "$w/$long240" "$w/$long255" "$w/dangling"
                        "$w/sp ace
nl" "$w/out.bin/" -o "$w/-o")
            out=${outs[$((RANDOM % ${#outs[@]}))]}
            case "$out" in /*) o=$out ;; "") o=$w/nothing ;; *) o=$w/$out ;; esac
            [ -e "$o" ] && existed=1
            skip=; [ -d "$o" ] || is_input "$o" || skip=$(realpath -ms "$o")
            before=$(inputs)
            if [ $prog = 0 ]; then cmd="cd $w && $root/asan/convert $hf '$out'"
                (cd "$w" && timeout 60 "$root/asan/convert" "$hf" "$out" > /dev/null 2> "$root/$dir/stderr.txt")
            else cmd="cd $w && $root/asan/run m.bin -d cpu -m logits -f ids.txt -o '$out'"
                (cd "$w" && timeout 60 "$root/asan/run" m.bin -d cpu -m logits -f ids.txt -o "$out" > /dev/null 2> "$root/$dir/stderr.txt"); fi
            judge $? "$o" ;;
        4) what=signal
            sig=${sigs[$((RANDOM % ${#sigs[@]}))]}
            skip=$out; before=$(inputs)
            set -m   # the program in a process group of its own, with no signal ignored (bash ignores INT and QUIT otherwise)
            if [ $prog = 0 ]; then full=$(stat -c %s "$dir/ref.bin"); cmd="asan/convert $hf $out    # SIG$sig"
                asan/convert "$hf" "$out" > /dev/null 2> "$dir/stderr.txt" &
            else full=$((8 * 512 * 4)); cmd="asan/run $w/m.bin -d cpu -m logits -f $w/ids.txt -o $out    # SIG$sig"
                asan/run "$w/m.bin" -d cpu -m logits -f "$w/ids.txt" -o "$out" > /dev/null 2> "$dir/stderr.txt" &
            fi
            pid=$!
            set +m
            sleep 0.0$((RANDOM % 10))$((RANDOM % 10))
            kill -s "$sig" $pid 2> /dev/null
            { wait $pid; } 2> /dev/null
            judge $? "$out" ;;
        esac
        [ $((t % 100)) = 0 ] && echo "$t tries, $runs runs: $clean clean, $findings findings"
    done
}
[ $pass = hf ] && { hf_pass; summary; exit; }
for b in v3 v2; do asan/convert tests/data/$b "$dir/$b.bin" > /dev/null || exit 1; done
head -c 400 tests/data/tok.txt > "$dir/text.txt"     # calibration and ppl text: 240 tokens
echo "1 2 3 4 5 6 7 8" > "$dir/ids.txt"
f=$dir/input.bin

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
summary
