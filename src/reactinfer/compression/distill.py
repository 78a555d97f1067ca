"""Distillation and recovery training.

The student learns to reproduce the teacher on the train part of the corpus (or the
user's data; for an image model: its train images, randomly shifted): logits KD for
classifiers (text and image) and LMs, loss = α·T²·KL(teacher/T ‖ student/T)
+ (1−α)·CE (CE where labels exist: next tokens for LMs), and for encoders MSE of the
last hidden states (when widths match) + MSE and (1 − cosine) of the pooled embedding.

The student is made from the teacher by a recipe of structural configs (`student=`),
given by the user (`student_model=`), or is the input model itself being recovered
after pruning (`teacher=` the original, by default reloaded from the handle's source).
Learning rate: linear warm-up then cosine decay, or the error-driven lr = lr0/(1+k·error).
Early stopping on the validation error (a slice of the train part; the eval part stays
unseen for the final report), a time budget, a tqdm bar with loss and quality, and
checkpoints (safetensors + JSON) that let an interrupted run resume where it stopped.

`RecalibrateBatchNorm` re-estimates BatchNorm statistics on calibration images: the last
step of recovering a pruned, distilled or merged CNN.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F  # noqa: N812

from ..core import deadline
from ..core.errors import UserError
from ..core.handle import takes_images
from ..core.transform import TransformConfig, config_from_dict, register_transform
from ._common import check_choice, clone, need_model

if TYPE_CHECKING:
    from ..core.handle import ModelHandle

SCHEDULES = ("cosine", "error")
_RUN_ONLY = ("progress", "time_budget_s", "checkpoint_dir")  # do not change the result


@dataclasses.dataclass(frozen=True)
class Distill(TransformConfig):
    """Train a student to match a teacher (see the module docstring for who is who)."""
    student: tuple[dict[str, Any], ...] = ()
    student_model: str | None = None
    teacher: str | None = None
    steps: int = 200
    batch_size: int = 16
    lr: float = 1e-4
    schedule: str = "cosine"
    warmup: float = 0.1
    decay_k: float = 10.0
    alpha: float = 0.5
    temperature: float = 2.0
    hidden_weight: float = 1.0
    eval_every: int = 50
    patience: int = 3
    n_train: int | None = None
    n_val: int = 64
    data: str | None = None
    time_budget_s: float | None = None
    # stop after exactly this many steps (the schedule still spans `steps`): what a run cut
    # by `time_budget_s` records in the recipe (`as_run`), so a rebuild repeats it exactly
    run_steps: int | None = None
    checkpoint_dir: str | None = None
    seed: int = 0
    progress: bool = True

    def validate(self) -> None:
        check_choice("Distill", "schedule", self.schedule, SCHEDULES)
        for name in ("steps", "batch_size", "eval_every", "patience", "n_val"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise UserError(f"Distill: {name} must be a positive integer, "
                                f"got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise UserError(f"Distill: lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup < 1:
            raise UserError(f"Distill: warmup is a fraction of steps in [0, 1), got {self.warmup}")
        if not 0 <= self.alpha <= 1:
            raise UserError(f"Distill: alpha must be in [0, 1], got {self.alpha}")
        if not self.temperature > 0 or self.decay_k < 0 or self.hidden_weight < 0:
            raise UserError("Distill: temperature must be > 0; decay_k, hidden_weight >= 0")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise UserError(f"Distill: time_budget_s must be > 0, got {self.time_budget_s}")
        if self.run_steps is not None and not (isinstance(self.run_steps, int)
                                               and 0 <= self.run_steps <= self.steps):
            raise UserError(f"Distill: run_steps must be an integer in [0, steps], got "
                            f"{self.run_steps!r}")
        if self.student and self.student_model:
            raise UserError("Distill: give student (a recipe) or student_model, not both")
        for d in self.student:
            cfg = config_from_dict(dict(d))  # validates each step of the recipe
            if type(cfg).replay_on_load or isinstance(cfg, Distill):
                raise UserError(f"Distill: the student recipe may hold structural steps "
                                f"(pruning, layer dropping), not {type(cfg).__name__}")

    def as_run(self, result: ModelHandle) -> Distill:
        """A time-budgeted run's recipe holds the steps it ran instead of its clock: the
        same number of steps is the same model, bit for bit (the batches, dropout and
        schedule depend on the seed and the step only)."""
        ran = (result.metrics.get("distill") or {}).get("steps")
        if self.time_budget_s is None or not isinstance(ran, int):
            return self
        return dataclasses.replace(self, time_budget_s=None, run_steps=ran)

    def fingerprint(self) -> str:
        d = {k: v for k, v in self.to_dict().items() if k not in _RUN_ONLY}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


# -- schedules -------------------------------------------------------------------------------

def lr_at(cfg: Distill, step: int, error: float | None) -> float:
    """Learning rate for `step` (0-based): warm-up then cosine, or lr0/(1+k·error)."""
    warm = int(cfg.warmup * cfg.steps)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.schedule == "error":
        return cfg.lr / (1 + cfg.decay_k * (error if error is not None else 0.0))
    progress = (step - warm) / max(cfg.steps - warm, 1)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


# -- losses ------------------------------------------------------------------------------------

def _forward(model: torch.nn.Module, task: str, batch: dict[str, torch.Tensor]) -> Any:
    from ..tasks import get_task

    spec = get_task(task)
    if spec.generates:
        return model(**batch, use_cache=False)
    if spec.takes_images:  # a plain CNN takes the pixels; labels are the loss's
        return model(batch["pixel_values"])
    return model(**batch)


def _pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (B, D)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            alpha: float, labels: torch.Tensor | None = None) -> torch.Tensor:
    """α·T²·KL(teacher/T ‖ student/T) + (1−α)·CE(student, labels); rows are (N, C)."""
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, -1), F.log_softmax(teacher_logits / t, -1),
                  log_target=True, reduction="batchmean") * t * t
    if labels is None:
        return kl
    return alpha * kl + (1 - alpha) * F.cross_entropy(student_logits, labels)


def distill_loss(task: str, cfg: Distill, s_out: Any, t_out: Any,
                 batch: dict[str, torch.Tensor]) -> torch.Tensor:
    from ..tasks import get_task

    spec = get_task(task)  # the loss follows what the task's model outputs
    if spec.takes_images:  # logits (B, C) of a plain CNN, or an output with .logits
        s, t = (getattr(o, "logits", o) for o in (s_out, t_out))
        return kd_loss(s, t, cfg.temperature, cfg.alpha, batch.get("labels"))
    mask = batch["attention_mask"]
    if spec.primary_output == "embeddings":  # hidden states, mean-pooled as the task pools
        hs, ht = s_out[0], t_out[0]  # (B, T, D)
        ps, pt = _pooled(hs, mask), _pooled(ht, mask)
        loss = F.mse_loss(ps, pt) + (1 - F.cosine_similarity(ps, pt, dim=-1)).mean()
        if hs.shape[-1] == ht.shape[-1] and cfg.hidden_weight:
            m = mask.unsqueeze(-1).to(hs.dtype)
            loss = loss + cfg.hidden_weight * ((hs - ht) ** 2 * m).sum() / (
                m.sum() * hs.shape[-1]).clamp(min=1)
        return loss
    if not spec.generates:
        return kd_loss(s_out.logits, t_out.logits, cfg.temperature, cfg.alpha)
    # causal LM: every real position predicts the next token
    valid = (mask[:, 1:] * mask[:, :-1]).bool()  # (B, T-1)
    s, t = s_out.logits[:, :-1][valid], t_out.logits[:, :-1][valid]  # (N, V)
    labels = batch["input_ids"][:, 1:][valid]
    return kd_loss(s, t, cfg.temperature, cfg.alpha, labels)


# -- BatchNorm ---------------------------------------------------------------------------------

def recalibrate_batchnorm(model: torch.nn.Module, batches: Iterable[Any]) -> int:
    """Re-estimate BatchNorm running statistics on `batches` (after pruning, quantization
    or distillation changed what flows into them). Returns the number of BN layers."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    was_training = model.training
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    model.train()
    with torch.no_grad():
        for b in batches:
            model(**b) if isinstance(b, dict) else model(b)
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom
    model.train(was_training)
    return len(bns)


@dataclasses.dataclass(frozen=True)
class RecalibrateBatchNorm(TransformConfig):
    """Re-estimate every BatchNorm's running mean and variance on `n_samples` calibration
    items (of `data`, else the model's built-in set), in batches of `batch_size`: after
    channel pruning, distillation or a weight merge the stored statistics no longer match
    what flows into the layer. A model without BatchNorm is returned unchanged."""
    n_samples: int = 256
    batch_size: int = 32
    data: str | None = None

    def validate(self) -> None:
        for name in ("n_samples", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise UserError(f"RecalibrateBatchNorm: {name} must be a positive integer, "
                                f"got {getattr(self, name)!r}")


@register_transform(RecalibrateBatchNorm)
def _recalibrate(handle: ModelHandle, cfg: RecalibrateBatchNorm) -> ModelHandle:
    from ..data import items_for

    model = need_model(handle, "RecalibrateBatchNorm")
    if not takes_images(handle.task):
        raise UserError(f"RecalibrateBatchNorm: calibration batches are built for image "
                        f"models; {handle.name} is a {handle.task} model")
    new = clone(model)
    items = items_for(handle, "calibration", cfg.data, cfg.n_samples)
    if not items:
        raise UserError("RecalibrateBatchNorm: the calibration data is empty")
    batches = (torch.from_numpy(handle.tokenizer(items[i:i + cfg.batch_size])["pixel_values"])
               for i in range(0, len(items), cfg.batch_size))
    n = recalibrate_batchnorm(new, batches)
    return handle.derive(model=new.eval(), metrics={**handle.metrics,
                                                    "batchnorm_recalibrated": n})


# -- checkpoints -------------------------------------------------------------------------------

def _save_checkpoint(d: Path, cfg: Distill, student: torch.nn.Module, best: dict | None,
                     opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    from safetensors.torch import save_file, save_model

    d.mkdir(parents=True, exist_ok=True)
    save_model(student, str(d / "student.safetensors"))
    if best is not None:
        save_file({k: v.contiguous() for k, v in best.items()}, str(d / "best.safetensors"))
    flat = {f"{i}.{k}": v.detach().reshape(-1) if v.dim() == 0 else v.detach()
            for i, s in opt.state_dict()["state"].items() for k, v in s.items()
            if isinstance(v, torch.Tensor)}
    save_file(flat, str(d / "optimizer.safetensors"))
    tmp = d / "state.json.tmp"  # written last and atomically: it marks a complete checkpoint
    tmp.write_text(json.dumps({**state, "fingerprint": cfg.fingerprint()}, indent=1))
    tmp.replace(d / "state.json")


def _load_checkpoint(d: Path, cfg: Distill, student: torch.nn.Module,
                     opt: torch.optim.Optimizer) -> tuple[dict[str, Any], dict | None] | None:
    from safetensors.torch import load_file, load_model

    if not (d / "state.json").is_file():
        return None
    state = json.loads((d / "state.json").read_text())
    if state.get("fingerprint") != cfg.fingerprint():
        raise UserError(f"{d} holds a checkpoint of a different distillation run; use another "
                        "checkpoint_dir or delete it")
    load_model(student, str(d / "student.safetensors"))
    flat = load_file(str(d / "optimizer.safetensors"))
    sd = opt.state_dict()
    for key, v in flat.items():
        i, name = key.split(".", 1)
        sd["state"].setdefault(int(i), {})[name] = v.reshape(()) if name == "step" else v
    opt.load_state_dict(sd)
    best = load_file(str(d / "best.safetensors")) if (d / "best.safetensors").exists() else None
    return state, best


# -- the loop ------------------------------------------------------------------------------------

def _batches(handle: ModelHandle, texts: list[Any], idx: list[int],
             gen: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    from ..tasks import tokenize

    if takes_images(handle.task):
        return _image_batch(handle, [texts[i] for i in idx], gen or torch.Generator())
    b = tokenize(handle.tokenizer, [texts[i] for i in idx], handle.max_length)
    return {k: torch.from_numpy(v) for k, v in b.items()}


def _image_batch(handle: ModelHandle, items: list[Any], gen: torch.Generator
                 ) -> dict[str, torch.Tensor]:
    """Preprocessed pixels, randomly shifted by up to 1/8 of the side (edges padded with
    zeros: so a few photos or 8×8 digits give many different views), with labels when
    every item has one (then the loss adds cross-entropy, weighted 1 − alpha)."""
    from ..tasks.metrics import item_labels

    x = torch.from_numpy(handle.tokenizer(items)["pixel_values"])  # (B, C, H, W)
    h, w = x.shape[-2:]
    p = max(1, min(h, w) // 8)
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    dy, dx = (int(v) for v in torch.randint(0, 2 * p + 1, (2,), generator=gen))
    out = {"pixel_values": padded[..., dy:dy + h, dx:dx + w].contiguous()}
    labels = item_labels(items)
    if labels is not None:
        out["labels"] = torch.from_numpy(labels)
    return out


def validation_error(handle: ModelHandle, teacher: torch.nn.Module, student: torch.nn.Module,
                     texts: list[str], batch_size: int = 32) -> tuple[float, dict[str, float]]:
    """The task's quality drop of the student against the teacher on `texts`."""
    from ..tasks import get_task

    task = get_task(handle.task)

    def runner(module: torch.nn.Module) -> Any:
        wrapped = task.wrap(module).eval()

        def run(batch: dict[str, Any]) -> Any:
            with torch.inference_mode():
                return wrapped(**{k: torch.from_numpy(v) for k, v in batch.items()}).numpy()
        return run

    ref = task.evaluate(runner(teacher), handle.tokenizer, texts, batch_size, handle.max_length)
    cand = task.evaluate(runner(student), handle.tokenizer, texts, batch_size, handle.max_length)
    quality = task.compare(ref, cand)
    return task.drop(quality), quality


def validation_split(items: list[Any], n_val: int) -> tuple[list[Any], list[Any]]:
    """`n_val` items spread evenly over `items` for validation, the rest for training. Not
    the tail: items often come grouped (an image folder's class subfolders in order, a
    corpus by source), and the tail of a class-ordered folder is one class, which the
    student would then never train on and be validated on alone."""
    n_val = max(0, min(n_val, len(items)))
    picked = {int((i + 0.5) * len(items) / n_val) for i in range(n_val)} if n_val else set()
    return ([it for i, it in enumerate(items) if i in picked],
            [it for i, it in enumerate(items) if i not in picked])


def train(handle: ModelHandle, teacher: torch.nn.Module, student: torch.nn.Module,
          cfg: Distill) -> dict[str, Any]:
    """Distil `teacher` into `student` in place; returns the run's report."""
    from tqdm.auto import tqdm

    from ..data import items_for

    texts = items_for(handle, "train", cfg.data)
    if len(texts) < 2:
        raise UserError("Distill: the training data has fewer than 2 items")
    val, train_texts = validation_split(texts, min(cfg.n_val, max(1, len(texts) // 5)))
    if cfg.n_train is not None:
        train_texts = train_texts[:cfg.n_train]
    teacher.eval()
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=0.0)
    ckpt = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    state: dict[str, Any] = {"step": 0, "best_error": None, "bad_evals": 0, "history": []}
    best: dict | None = None
    if ckpt is not None:
        loaded = _load_checkpoint(ckpt, cfg, student, opt)
        if loaded is not None:
            state, best = loaded
    error0, _ = validation_error(handle, teacher, student, val)
    if state["best_error"] is None:
        state["best_error"], state["initial_error"] = error0, error0
    start, t0, stop = state["step"], time.perf_counter(), "steps"
    n = len(train_texts)
    last_error = state["history"][-1]["error"] if state["history"] else error0
    bar = tqdm(total=cfg.steps, initial=start, desc="distill", disable=not cfg.progress,
               leave=False)
    step = start
    last = cfg.steps if cfg.run_steps is None else cfg.run_steps
    while step < last:
        if cfg.time_budget_s is not None and time.perf_counter() - t0 > cfg.time_budget_s:
            stop = "time budget"
            break
        # a step of a caller's deadline (the planner's) is abandoned whole, never cut short
        # into another model: a slow machine makes each step slower, not the recipe shorter
        deadline.check(f"distillation step {step + 1}")
        # the order depends only on (seed, step), so a resumed run sees the same batches
        pos = step * cfg.batch_size
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + pos // n))
        idx = perm[pos % n:pos % n + cfg.batch_size].tolist()
        batch = _batches(handle, train_texts, idx,
                         torch.Generator().manual_seed(cfg.seed * 1_000_003 + step))
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step, last_error)
        student.train()
        torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout too, for exact resumes
        with torch.no_grad():
            t_out = _forward(teacher, handle.task, batch)
        loss = distill_loss(handle.task, cfg, _forward(student, handle.task, batch), t_out, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", err=f"{last_error:.4f}")
        if step % cfg.eval_every == 0 or step == cfg.steps:
            student.eval()
            last_error, quality = validation_error(handle, teacher, student, val)
            state["history"].append({"step": step, "loss": loss.item(), "error": last_error,
                                     "lr": opt.param_groups[0]["lr"], **quality})
            if last_error < state["best_error"]:
                state["best_error"], state["bad_evals"] = last_error, 0
                best = {k: v.detach().clone() for k, v in student.state_dict().items()}
            else:
                state["bad_evals"] += 1
            state["step"] = step
            if ckpt is not None:
                _save_checkpoint(ckpt, cfg, student, best, opt, state)
            if state["bad_evals"] >= cfg.patience:
                stop = "early stop"
                break
    bar.close()
    if best is not None:  # hand back the best student seen, not the last
        student.load_state_dict(best, strict=False)
    student.eval()
    return {"steps": step, "stopped": stop, "initial_error": state.get("initial_error", error0),
            "best_error": state["best_error"], "history": state["history"],
            "seconds": time.perf_counter() - t0}


def _original(handle: ModelHandle) -> torch.nn.Module:
    from ..models import load

    src = handle.source
    if src.get("kind") == "artifact":
        src = src.get("origin", {})
    if src.get("kind") in ("builtin", "hf", "gguf") and src.get("ref"):
        return need_model(load(src["ref"], task=handle.task), "Distill's teacher")
    raise UserError("Distill: recovering this model needs its teacher: pass teacher=<path or "
                    "built-in name>, or student=<recipe> to make the student from this model")


@register_transform(Distill)
def _distill(handle: ModelHandle, cfg: Distill) -> ModelHandle:
    from ..core.transform import compress
    from ..models import load

    model = need_model(handle, "Distill")
    if cfg.student:
        teacher = model
        student = need_model(compress(handle, [config_from_dict(dict(d)) for d in cfg.student]),
                             "Distill's student")
    elif cfg.student_model:
        student_handle = load(cfg.student_model, task=handle.task)
        teacher, student = model, clone(need_model(student_handle, "Distill's student"))
    else:
        teacher = need_model(load(cfg.teacher, task=handle.task), "Distill's teacher") \
            if cfg.teacher else _original(handle)
        student = clone(model)
    if student is model:
        student = clone(model)
    report = train(handle, teacher, student, cfg)
    metrics = {**handle.metrics, "distill": {k: v for k, v in report.items() if k != "history"}}
    return handle.derive(model=student, metrics=metrics)
