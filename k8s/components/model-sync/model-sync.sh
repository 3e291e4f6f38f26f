#!/bin/sh
# model-sync sidecar: copies the newest $KEEP_VERSIONS versions of a bucket's model repository, and every version
# the served TF Serving configs pin, into the Pod's repository, renaming each into place only when complete; prunes
# the other local versions and touches a heartbeat for the liveness probe. Shipped as a ConfigMap file
# (kustomization.yaml) so tests/test_model_sync.py runs this exact file with a fake rclone.
set -eu
MODELS_ROOT="${MODELS_ROOT:-/models}"
HEARTBEAT_FILE="${HEARTBEAT_FILE:-/tmp/model-sync-heartbeat}"
# The newest two: the release and a candidate (or, under models.config's latest { num_versions: 2 }, what it serves).
KEEP_VERSIONS="${KEEP_VERSIONS:-2}"
# Versions pinned by these configs are always kept too (`versions: N` of a `specific` policy): a released version
# must stay however many candidates land after it. Missing files pin nothing.
PINNED_CONFIGS="${PINNED_CONFIGS:-/config/models.release.config /config/models.canary.config}"
SYNC_LOOPS="${SYNC_LOOPS:-0}"  # 0: forever (the Pod); tests stop after N loops
case "$KEEP_VERSIONS" in
  ''|*[!0-9]*|0) echo "KEEP_VERSIONS must be a positive integer: $KEEP_VERSIONS" >&2; exit 1 ;;
esac
case "$MODEL_SOURCE" in
  gs://*) remote=":gcs:${MODEL_SOURCE#gs://}" ;;
  s3://*) remote=":s3:${MODEL_SOURCE#s3://}" ;;
  *) echo "MODEL_SOURCE must start with gs:// or s3://: $MODEL_SOURCE" >&2; exit 1 ;;
esac
remote="${remote%/}"
dest="$MODELS_ROOT/$MODEL_NAME"
mkdir -p "$dest"
loops=0
while :; do
  # A failed listing exits the script: the kubelet restarts the sidecar with back-off, visibly.
  listing="$(rclone lsf --dirs-only "$remote")"
  # Re-read each loop: a release normally rolls the Pods, but a ConfigMap updated in place is seen too.
  # shellcheck disable=SC2086  # PINNED_CONFIGS is a list of paths
  pinned="$(cat $PINNED_CONFIGS 2>/dev/null | sed -n 's/^[[:space:]]*versions:[[:space:]]*\([0-9][0-9]*\).*/\1/p' \
    | sort -un | tr '\n' ' ' || true)"
  versions="$(printf '%s\n' "$listing" | tr -d / | grep -E '^[0-9]+$' | sort -n || true)"
  # The newest KEEP_VERSIONS of the bucket and the pinned ones: anything else would be pruned right after copying.
  # shellcheck disable=SC2086  # one pinned version per line
  wanted="$( { printf '%s\n' "$versions" | tail -n "$KEEP_VERSIONS"; printf '%s\n' $pinned; } \
    | grep -E '^[0-9]+$' | sort -un || true)"
  for version in $wanted; do
    # A pinned version that is not in the bucket (yet) cannot be copied; TF Serving waits for it.
    printf '%s\n' "$versions" | grep -qx "$version" || continue
    if [ ! -d "$dest/$version" ]; then
      # Copy beside the repository, then rename: TF Serving never sees a half-copied version
      # (it ignores directories whose names are not numbers).
      rm -rf "$dest/.incoming-$version"
      rclone copy --checksum "$remote/$version" "$dest/.incoming-$version"
      mv "$dest/.incoming-$version" "$dest/$version"
      echo "model-sync: version $version of $MODEL_NAME is in place"
    fi
  done
  # Prune local versions beyond the newest KEEP_VERSIONS, except pinned ones. Never the newest: those are what the
  # server serves or is still loading (with models.config's latest policy, it has already unloaded anything older).
  # Rename out of sight first (not a number: TF Serving ignores it), then delete.
  for version in $(ls "$dest" | grep -E '^[0-9]+$' | sort -n \
      | awk -v keep="$KEEP_VERSIONS" '{ v[NR] = $0 } END { for (i = 1; i <= NR - keep; i++) print v[i] }'); do
    # A plain word match, the same in busybox and GNU userlands (the rclone image is Alpine's busybox).
    case " $pinned " in *" $version "*) continue ;; esac
    mv "$dest/$version" "$dest/.prune-$version"
    rm -rf "$dest/.prune-$version"
    echo "model-sync: pruned version $version of $MODEL_NAME (keeping the newest $KEEP_VERSIONS and the pinned)"
  done
  touch "$MODELS_ROOT/.model-sync-ready"
  # Liveness: the probe fails when this is older than 3 intervals (a hung rclone, a stuck loop).
  date +%s > "$HEARTBEAT_FILE"
  loops=$((loops + 1))
  if [ "$SYNC_LOOPS" -gt 0 ] && [ "$loops" -ge "$SYNC_LOOPS" ]; then
    exit 0
  fi
  sleep "$SYNC_INTERVAL_SECONDS"
done
