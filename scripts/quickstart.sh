#!/usr/bin/env bash
# From a fresh checkout to a served, explained prediction, in one command:
#   scripts/quickstart.sh
# Sets up .venv, trains the short recipe if no model is exported yet, archives it, starts
# TorchServe (left running), and asks it for a prediction and an explanation of a sample.
# Settings (environment variables; serve.sh's knobs such as RUN_DIR and the ports apply too):
#   EXPORT_DIR=artifacts/export   exported model to serve (trained here if missing)
#   TRAIN_DIR=artifacts/train     where the short training writes its checkpoints
#   EPOCHS=2                      epochs of the short recipe
#   SAMPLE=samples/ankle_boot.png image to predict and explain
set -euo pipefail
cd "$(dirname "$0")/.."

export_dir=${EXPORT_DIR:-artifacts/export}
train_dir=${TRAIN_DIR:-artifacts/train}
epochs=${EPOCHS:-2}
sample=${SAMPLE:-samples/ankle_boot.png}
python=.venv/bin/python

say() { printf '\n==> %s\n' "$*"; }

say "setting up .venv"
# Only what running needs: no test tools, no benchmark peer server.
EXTRAS=train scripts/setup.sh

if [[ ! -f "${export_dir}/model.pt" ]]; then
    say "no model in ${export_dir}: training the SHORT recipe (${epochs} epochs, a few minutes on 2 cores)"
    echo "    for the full recipe run: ${python} -m training train --out ${train_dir}"
    echo "    then: ${python} -m training export --checkpoint ${train_dir}/best.pt --out ${export_dir}"
    "$python" -m training train --epochs "$epochs" --out "$train_dir"
    "$python" -m training export --checkpoint "${train_dir}/best.pt" --out "$export_dir"
fi

say "archiving ${export_dir} into model_store/"
scripts/archive.sh "$export_dir"

say "starting TorchServe"
# A server left running by an earlier quickstart would still serve the old archive.
status=0
scripts/serve.sh status >/dev/null 2>&1 || status=$?
if ((status != 3)); then # 3: not running
    scripts/serve.sh stop
fi
scripts/serve.sh start

say "prediction for ${sample}"
"$python" scripts/client.py predict "$sample"

say "explanation for ${sample} (integrated gradients, predicted class)"
"$python" scripts/client.py explain "$sample"

say "TorchServe is still running"
echo "    predict:  ${python} scripts/client.py predict samples/*.png"
echo "    explain:  ${python} scripts/client.py explain samples/bag.png --target Bag"
echo "    curl:     scripts/predict.sh samples/sneaker.png"
echo "    stop:     ${RUN_DIR:+RUN_DIR=${RUN_DIR} }scripts/serve.sh stop"
