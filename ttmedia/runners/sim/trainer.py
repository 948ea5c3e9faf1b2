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
import csv
import math
import os
import random
import re
import struct
import tempfile
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ttmedia.runners.base import Runner, RunnerRequestError, device_time
from ttmedia.runners.sim import tokenizer
from ttmedia.runners.types import Progress, TrainingEvent, TrainingRequest, TrainingResult

#: Training examples per upstream dataset loader (SST2 and Alpaca train splits); Custom: a guess.
DATASET_SIZES = {"SST2": 67_349, "Alpaca": 52_002, "Custom": 10_000}
_LAYERS = 2
_HIDDEN = 64
_PLACEHOLDER = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)}")


@dataclass
class Dataset:
    """A Custom dataset as the trainer sees it: one prompt per record, and their token counts."""

    path: str
    prompts: list[str]
    tokens: list[int]

    def truncated(self, max_tokens: int) -> int:
        return sum(1 for n in self.tokens if n > max_tokens)


def _records(path: str, file_type: str) -> list[dict[str, Any]]:
    kind = file_type.lower()
    with open(path, encoding="utf-8", newline="") as fh:
        if kind == "csv":
            return list(csv.DictReader(fh))
        if kind == "jsonl":
            rows = [orjson.loads(line) for line in fh if line.strip()]
        elif kind == "json":
            rows = orjson.loads(fh.read())
            if isinstance(rows, dict):  # {"data": [...]} or {"train": [...]}: the one list inside
                lists = [v for v in rows.values() if isinstance(v, list)]
                rows = lists[0] if len(lists) == 1 else [rows]
        else:
            raise RunnerRequestError(f"file_type {file_type!r} is not one of jsonl, json, csv")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise RunnerRequestError(f"{path}: expected one JSON object per record")
    return rows


def load_dataset(path: str | None, file_type: str | None, template: str | None,
                 column_mapping: dict[str, str] | None, role: str = "train") -> Dataset:
    """Read a Custom dataset and fill `template` from each record (through `column_mapping`:
    template field → the record's column). Raises RunnerRequestError with what is wrong."""
    if not path or not file_type or not template:
        raise RunnerRequestError("dataset_loader Custom needs train_dataset_path, file_type and template")
    try:
        rows = _records(path, file_type)
    except FileNotFoundError:
        raise RunnerRequestError(f"{role} dataset {path!r} does not exist on this server") from None
    except (OSError, UnicodeDecodeError, orjson.JSONDecodeError, csv.Error) as exc:
        raise RunnerRequestError(f"{role} dataset {path!r} cannot be read as {file_type}: {exc}") from None
    if not rows:
        raise RunnerRequestError(f"{role} dataset {path!r} has no records")
    mapping = column_mapping or {}
    prompts = []
    for number, row in enumerate(rows, 1):
        def fill(match: re.Match[str], row: dict[str, Any] = row, number: int = number) -> str:
            column = mapping.get(match.group(1), match.group(1))
            if column not in row:
                raise RunnerRequestError(f"{role} dataset record {number} has no column {column!r} "
                                         f"(template field {{{match.group(1)}}})")
            return str(row[column])

        prompts.append(_PLACEHOLDER.sub(fill, template))
    return Dataset(path, prompts, [len(tokenizer.encode(p)) for p in prompts])


def total_steps(request: TrainingRequest, examples: int | None = None) -> tuple[int, int]:
    """(steps to run, steps per epoch) over `examples` training examples (default: the built-in
    dataset's size). max_steps > 0 caps the run, as upstream."""
    per_batch = max(1, request.batch_size) * max(1, request.gradient_accumulation_steps)
    size = examples if examples is not None else DATASET_SIZES.get(request.dataset_loader, 10_000)
    per_epoch = max(1, math.ceil(size / per_batch))
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
        train = val = None
        if request.dataset_loader == "Custom":
            train, val = await asyncio.to_thread(self._custom_datasets, request)
        total, per_epoch = total_steps(request, len(train.prompts) if train else None)
        start = request.resume_step
        lr = request.learning_rate or 2e-5
        steps_freq = max(1, request.steps_freq)
        # A Custom dataset is validated only against a validation file of its own.
        val_freq = max(0, request.val_steps_freq) if (train is None or val is not None) else 0
        save_interval = max(0, request.save_interval)
        grad_acc = max(1, request.gradient_accumulation_steps)
        seed = request.job_id + (f"/{len(train.prompts)}" if train else "")
        yield TrainingEvent("log", start, message=(
            f"Training {self.ctx.model} with LoRA r={request.lora_r} on {request.dataset_loader}: "
            f"{total} steps ({per_epoch} per epoch), starting at step {start}."))
        for dataset in (d for d in (train, val) if d is not None):
            cut = dataset.truncated(request.dataset_max_sequence_length)
            yield TrainingEvent("log", start, message=(
                f"{dataset.path}: {len(dataset.prompts)} examples, up to {max(dataset.tokens)} tokens"
                + (f"; {cut} truncated to {request.dataset_max_sequence_length}" if cut else "") + "."))
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

    @staticmethod
    def _custom_datasets(request: TrainingRequest) -> tuple[Dataset, Dataset | None]:
        train = load_dataset(request.train_dataset_path, request.file_type, request.template, request.column_mapping)
        val = None
        if request.val_dataset_path:
            val = load_dataset(request.val_dataset_path, request.file_type, request.template, request.column_mapping,
                               role="validation")
        return train, val

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
