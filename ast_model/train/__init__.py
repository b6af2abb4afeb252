"""Training: typed config, Charbonnier loss, per-step schedules, the DeepSpeed engine and loop.

Modules (import what you need; nothing heavy is imported here):
    config       TrainConfig (a ``train*`` section of params.yaml), phase resolution, pre-launch checks,
                 the DeepSpeed config builder.
    spec         RunSpec: the resolved run every worker receives, and its fingerprint (resume or not).
    loss         Charbonnier loss.
    schedule     Warm-up + cosine learning rate per step, restarted per progressive phase.
    distributed  Process group (with timeouts), seeding, RNG state, the collectives the loop uses.
    engine       deepspeed.initialize, LR setting, fp32 master weights, export in the project format.
    checkpoints  DeepSpeed checkpoints on every rank + RNG, committed by ``latest.json``.
    data         Shard batches per checkpoint interval (seeded, so resume replays them) or synthetic ones.
    validate     PSNR / SSIM over the validation split, shared across ranks.
    loop         The loop: phases as one run, validation, NaN guard, progress bar, tracker calls.
    run          One worker's whole run: resume decision, engine, tracker, summary.
    tracker      The tracker protocol (MLflow lives in ``pipelines.tracking``).
    bench        ``python -m ast_model.train.step_bench``: throughput, engine overhead, scaling.
"""
