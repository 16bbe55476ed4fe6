#!/usr/bin/env bash
# Every GPU measurement of docs/gpu-training.md in one go, each its own `python -m kdm profile` process under its
# own timeout (together under 10 minutes): the KDM student of EXP (default cifar10-uncond) in fp32, bf16,
# bf16 + channels-last and bf16 + compiled UNet blocks, then the teacher's pairs/s in fp32 and bf16. One that
# fails or runs out of time is reported and the others still run. Arguments after EXP go to every call (on a
# CPU, to test this script: --scale small --batch 2 --steps 3 --repeats 1 --pairs-batch 2).
#
#   bash workflow/benchmark/gpu-profile.sh [EXP [PROFILE OPTIONS...]]
#
# Results: $KDM_PROFILE_OUT (default results/profile/gpu)/<measurement>/EXP.{json,md}, and all the tables in
# $KDM_PROFILE_OUT/EXP.md. Params: $KDM_PARAMS (default params.yaml).
set -u
exp=${1:-cifar10-uncond}
shift $(($# > 0 ? 1 : 0))
out=${KDM_PROFILE_OUT:-results/profile/gpu}
status=0

measure() { # name, seconds, options...
    local name=$1 seconds=$2
    shift 2
    if ! timeout --kill-after=10 "$seconds" python -m kdm --params "${KDM_PARAMS:-params.yaml}" profile "$exp" \
        --out "$out/$name" "$@"; then
        echo "gpu-profile: $name failed or ran past $seconds s" >&2
        status=1
    fi
}

measure fp32 80 --variants fp32 --pairs none "$@"
measure bf16 80 --variants bf16 --pairs none "$@"
measure bf16-channels-last 80 --variants bf16+channels_last --pairs none "$@"
measure bf16-compile-blocks 200 --variants bf16+compile=blocks --pairs none "$@"
measure pairs 90 --variants none --pairs fp32,bf16 "$@"
for name in fp32 bf16 bf16-channels-last bf16-compile-blocks pairs; do
    cat "$out/$name/$exp.md" 2>/dev/null || echo "# $name: no result"
    echo
done >"$out/$exp.md"
exit $status
