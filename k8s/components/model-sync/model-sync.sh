#!/bin/sh
# model-sync sidecar: copies the newest $KEEP_VERSIONS versions of a bucket's model repository into the Pod's
# repository, renaming each into place only when complete, prunes older local versions and touches a heartbeat
# for the liveness probe. Shipped as a ConfigMap file (kustomization.yaml) so tests/test_model_sync.py runs this
# exact file with a fake rclone.
set -eu
MODELS_ROOT="${MODELS_ROOT:-/models}"
HEARTBEAT_FILE="${HEARTBEAT_FILE:-/tmp/model-sync-heartbeat}"
# serving/models.config serves latest { num_versions: 2 }: keeping more only fills the emptyDir.
KEEP_VERSIONS="${KEEP_VERSIONS:-2}"
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
  # Only the newest KEEP_VERSIONS of the bucket: older ones would be pruned right after copying.
  wanted="$(printf '%s\n' "$listing" | tr -d / | grep -E '^[0-9]+$' | sort -n | tail -n "$KEEP_VERSIONS" || true)"
  for version in $wanted; do
    if [ ! -d "$dest/$version" ]; then
      # Copy beside the repository, then rename: TF Serving never sees a half-copied version
      # (it ignores directories whose names are not numbers).
      rm -rf "$dest/.incoming-$version"
      rclone copy --checksum "$remote/$version" "$dest/.incoming-$version"
      mv "$dest/.incoming-$version" "$dest/$version"
      echo "model-sync: version $version of $MODEL_NAME is in place"
    fi
  done
  # Prune local versions beyond the newest KEEP_VERSIONS. Never the newest ones: those are what the server
  # serves or is still loading; with KEEP_VERSIONS equal to the policy's num_versions, the server has already
  # unloaded anything older. Rename out of sight first (not a number: TF Serving ignores it), then delete.
  for version in $(ls "$dest" | grep -E '^[0-9]+$' | sort -n \
      | awk -v keep="$KEEP_VERSIONS" '{ v[NR] = $0 } END { for (i = 1; i <= NR - keep; i++) print v[i] }'); do
    mv "$dest/$version" "$dest/.prune-$version"
    rm -rf "$dest/.prune-$version"
    echo "model-sync: pruned version $version of $MODEL_NAME (keeping the newest $KEEP_VERSIONS)"
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
