"""Simulated LoRA fine-tuning: per-step device time, a decreasing loss, logs and checkpoints.

The run is a stream of chunks the job manager records: `metric` (train_loss every
`steps_freq`, val_loss every `val_steps_freq`), `log`, `checkpoint` (every `save_interval`
steps and at the end) and `progress`. A checkpoint is a real zip, PEFT-shaped:
`adapter_config.json` plus `adapter_model.safetensors` (LoRA A/B matrices per target module),
written atomically into `checkpoint_dir`. `resume_step` continues a run from its checkpoint
after a restart; the loss curve is a function of the step, so a resumed run continues it.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import struct
import tempfile
import zipfile
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import orjson

from ttmedia.runners.base import Runner, device_time
from ttmedia.runners.types import Progress, TrainingEvent, TrainingRequest, TrainingResult

#: Training examples per upstream dataset loader (SST2 and Alpaca train splits); Custom: a guess.
DATASET_SIZES = {"SST2": 67_349, "Alpaca": 52_002, "Custom": 10_000}
_LAYERS = 2
_HIDDEN = 64


def total_steps(request: TrainingRequest) -> tuple[int, int]:
    """(steps to run, steps per epoch). max_steps > 0 caps the run, as upstream."""
    per_batch = max(1, request.batch_size) * max(1, request.gradient_accumulation_steps)
    per_epoch = max(1, math.ceil(DATASET_SIZES.get(request.dataset_loader, 10_000) / per_batch))
    epochs = max(1, request.num_epochs)
    return (min(request.max_steps, per_epoch * epochs) if request.max_steps > 0 else per_epoch * epochs), per_epoch


def loss_at(step: int, total: int, learning_rate: float, seed: str) -> float:
    """An exponential decay towards a floor, with 1 % deterministic noise."""
    tau = max(5.0, total / 4) * min(4.0, max(0.25, math.sqrt(2e-5 / max(learning_rate, 1e-9))))
    base = 0.35 + 2.2 * math.exp(-step / tau)
    return round(base * (1 + random.Random(f"{seed}/{step}").uniform(-0.01, 0.01)), 6)


class SimTrainerRunner(Runner):
    family = "training"
    simulated = True

    async def warmup(self) -> None:
        await device_time(self.ctx.timing.warmup_s)

    async def stream(self, request: TrainingRequest) -> AsyncIterator[TrainingEvent | Progress | TrainingResult]:
        t = self.ctx.timing
        total, per_epoch = total_steps(request)
        start = request.resume_step
        lr = request.learning_rate or 2e-5
        steps_freq = max(1, request.steps_freq)
        val_freq = max(0, request.val_steps_freq)
        save_interval = max(0, request.save_interval)
        grad_acc = max(1, request.gradient_accumulation_steps)
        seed = request.job_id
        yield TrainingEvent("log", start, message=(
            f"Training {self.ctx.model} with LoRA r={request.lora_r} on {request.dataset_loader}: "
            f"{total} steps ({per_epoch} per epoch), starting at step {start}."))
        await device_time(t.base_s)
        loss = loss_at(max(start, 1), total, lr, seed)
        last_saved, last_progress = start, -1
        for step in range(start + 1, total + 1):
            await device_time(t.per_step_s * grad_acc)
            # Weight decay pulls the weights towards zero: a slightly higher loss floor.
            loss = round(loss_at(step, total, lr, seed) * (1 + min(request.weight_decay, 1.0) * 0.05), 6)
            epoch = (step - 1) // per_epoch
            if step % steps_freq == 0 or step == total:
                yield TrainingEvent("metric", step, metric_name="train_loss", value=loss, learning_rate=lr,
                                    epoch=epoch)
                yield TrainingEvent("log", step, message=f"step {step}/{total} epoch {epoch} loss {loss:.4f}")
            if val_freq and step % val_freq == 0:
                yield TrainingEvent("metric", step, metric_name="val_loss", value=round(loss * 1.05, 6), epoch=epoch)
            if ((save_interval and step % save_interval == 0) or step == total) and step != last_saved:
                yield await self._checkpoint(request, step, epoch, loss)
                last_saved = step
            progress = 100 * step // total
            if progress != last_progress:
                last_progress = progress
                yield Progress(progress, step, total)
        yield TrainingResult(total, loss)

    async def _checkpoint(self, request: TrainingRequest, step: int, epoch: int, loss: float) -> TrainingEvent:
        ckpt_id = f"checkpoint-{step}"
        await asyncio.to_thread(write_checkpoint, request, self.ctx.model, step, loss,
                                os.path.join(request.checkpoint_dir, f"{ckpt_id}.zip"))
        return TrainingEvent("checkpoint", step, id=ckpt_id, epoch=epoch, metrics={"train_loss": loss})


def write_checkpoint(request: TrainingRequest, model: str, step: int, loss: float, path: str) -> None:
    config = {
        "peft_type": "LORA", "task_type": request.lora_task_type or "CAUSAL_LM",
        "base_model_name_or_path": model, "r": request.lora_r or 4,
        "lora_alpha": request.lora_alpha or 8, "lora_dropout": 0.0,
        "target_modules": list(request.lora_target_modules or ["q_proj", "v_proj"]),
        "bias": "none", "inference_mode": True,
    }
    state = {"global_step": step, "loss": loss, "dtype": request.dtype}
    fd, partial = tempfile.mkstemp(prefix=".ckpt.", suffix=".part", dir=os.path.dirname(path))
    os.close(fd)
    try:
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("adapter_config.json", orjson.dumps(config, option=orjson.OPT_INDENT_2))
            zf.writestr("adapter_model.safetensors", _lora_weights(config, step))
            zf.writestr("trainer_state.json", orjson.dumps(state))
        os.chmod(partial, 0o644)
        os.replace(partial, path)  # atomic: a listed checkpoint is always a whole zip
    except BaseException:
        if os.path.exists(partial):
            os.unlink(partial)
        raise


def _lora_weights(config: dict[str, Any], step: int) -> bytes:
    """A valid safetensors file: u64 header length, JSON header, raw little-endian tensors."""
    rng = np.random.default_rng(step)
    r = int(config["r"])
    tensors: dict[str, np.ndarray] = {}
    for layer in range(_LAYERS):
        for module in config["target_modules"]:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal((r, _HIDDEN), dtype=np.float32) * 0.01
            tensors[f"{prefix}.lora_B.weight"] = rng.standard_normal((_HIDDEN, r), dtype=np.float32) * 1e-3
    header: dict[str, Any] = {"__metadata__": {"format": "pt", "step": str(step)}}
    offset, blobs = 0, []
    for name, array in tensors.items():
        data = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    head = orjson.dumps(header)
    head += b" " * (-len(head) % 8)  # the format wants the data 8-byte aligned
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)
