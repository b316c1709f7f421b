"""Breadth matrix: many transformers architectures, built from tiny random configs, pruned two ways.

Each architecture is pruned by width (``pruning_ratio=0.3``) and by heads
(``prune_num_heads=True, head_pruning_ratio=0.5``). Each case checks that the
asked part shrank to the asked ratio, the output keeps its shape, decoders
generate, and :func:`pruning_core_hf.save_pretrained` writes a directory that
loads in a fresh process (with stock transformers when it says so) giving the
same logits. The fast part runs a few architectures per category; the rest are
``slow``. ``python test_hf_matrix.py [--output FILE]`` runs every case and
prints the README table.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
import torch
from torch import nn

T = pytest.importorskip("transformers")

import pruning_core as tp  # noqa: E402
import pruning_core_hf  # noqa: E402
from pruning_core.errors import PruningWarning  # noqa: E402

TEXT = {"input_ids": torch.tensor([[5, 17, 3, 42, 8, 23, 11, 2]])}
SEQ2SEQ = {"input_ids": torch.tensor([[5, 17, 3, 42, 8, 23, 11, 2]]),
           "decoder_input_ids": torch.tensor([[0, 9, 14, 6]])}
IMAGE = {"pixel_values": torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))}

COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, n_embd=64, n_layer=2, n_head=4, n_positions=128,
              n_ctx=128, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
              decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, d_ff=128, d_kv=16, num_layers=2,
              num_decoder_layers=2, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=0,
              image_size=32, patch_size=8, num_channels=3, num_labels=5, num_local_experts=4, num_experts=4,
              num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=64,
              n_routed_experts=4, n_shared_experts=1, kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8,
              qk_nope_head_dim=8, v_head_dim=16, first_k_dense_replace=1, n_group=1, topk_group=1)


def tiny(config_class: Any, **overrides: Any) -> Any:
    """``config_class`` with the COMMON sizes it knows, then ``overrides``."""
    default = config_class()
    fields = {f.name for f in dataclasses.fields(config_class)} if dataclasses.is_dataclass(config_class) else \
        set(inspect.signature(config_class.__init__).parameters)
    values = {k: v for k, v in COMMON.items() if hasattr(default, k) and k in fields}
    if getattr(default, "head_dim", None) is not None and "head_dim" in fields:
        values["head_dim"] = 16
    values.update(overrides)
    return config_class(**values)


def _decoder(name: str, **overrides: Any) -> Callable[[], Tuple[nn.Module, Dict[str, torch.Tensor]]]:
    def build():
        config = tiny(getattr(T, name + "Config"), **overrides)
        return getattr(T, name + "ForCausalLM")(config), TEXT
    return build


def _model(model_class: str, config_class: str, inputs: Dict[str, torch.Tensor], **overrides: Any):
    def build():
        return getattr(T, model_class)(tiny(getattr(T, config_class), **overrides)), inputs
    return build


# name -> (category, builder). Categories: decoder, moe, encoder, seq2seq, vit, cnn.
ARCHS: Dict[str, Tuple[str, Callable[[], Tuple[nn.Module, Dict[str, torch.Tensor]]]]] = {
    "llama": ("decoder", _decoder("Llama")),
    "mistral": ("decoder", _decoder("Mistral")),
    "qwen2": ("decoder", _decoder("Qwen2")),
    "qwen3": ("decoder", _decoder("Qwen3")),
    "gemma": ("decoder", _decoder("Gemma")),
    "gemma2": ("decoder", _decoder("Gemma2")),
    "gemma3": ("decoder", _model("Gemma3ForCausalLM", "Gemma3TextConfig", TEXT)),
    "phi": ("decoder", _decoder("Phi")),
    "phi3": ("decoder", _decoder("Phi3")),
    "gpt2": ("decoder", _model("GPT2LMHeadModel", "GPT2Config", TEXT)),
    "gpt_neox": ("decoder", _decoder("GPTNeoX")),
    "gptj": ("decoder", _decoder("GPTJ", rotary_dim=8)),
    "bloom": ("decoder", _decoder("Bloom")),
    "falcon": ("decoder", _decoder("Falcon")),
    "opt": ("decoder", _decoder("OPT", ffn_dim=128, word_embed_proj_dim=64)),
    "stablelm": ("decoder", _decoder("StableLm")),
    "cohere": ("decoder", _decoder("Cohere")),
    "starcoder2": ("decoder", _decoder("Starcoder2")),
    "olmo2": ("decoder", _decoder("Olmo2")),
    "granite": ("decoder", _decoder("Granite")),
    "gpt_bigcode": ("decoder", _model("GPTBigCodeForCausalLM", "GPTBigCodeConfig", TEXT)),
    "mixtral": ("moe", _decoder("Mixtral")),
    "qwen2_moe": ("moe", _decoder("Qwen2Moe")),
    "qwen3_moe": ("moe", _decoder("Qwen3Moe")),
    "olmoe": ("moe", _decoder("Olmoe")),
    "deepseek_v3": ("moe", _decoder("DeepseekV3")),
    "bert": ("encoder", _model("BertForSequenceClassification", "BertConfig", TEXT)),
    "roberta": ("encoder", _model("RobertaForSequenceClassification", "RobertaConfig", TEXT)),
    "distilbert": ("encoder", _model("DistilBertForSequenceClassification", "DistilBertConfig", TEXT, dim=64,
                                     hidden_dim=128, n_layers=2, n_heads=4)),
    "albert": ("encoder", _model("AlbertForSequenceClassification", "AlbertConfig", TEXT, embedding_size=32)),
    "electra": ("encoder", _model("ElectraForSequenceClassification", "ElectraConfig", TEXT, embedding_size=32)),
    "deberta_v2": ("encoder", _model("DebertaV2ForSequenceClassification", "DebertaV2Config", TEXT)),
    "mpnet": ("encoder", _model("MPNetForSequenceClassification", "MPNetConfig", TEXT)),
    "xlm_roberta": ("encoder", _model("XLMRobertaForSequenceClassification", "XLMRobertaConfig", TEXT)),
    "t5": ("seq2seq", _model("T5ForConditionalGeneration", "T5Config", SEQ2SEQ)),
    "bart": ("seq2seq", _model("BartForConditionalGeneration", "BartConfig", SEQ2SEQ)),
    "marian": ("seq2seq", _model("MarianMTModel", "MarianConfig", SEQ2SEQ)),
    "vit": ("vit", _model("ViTForImageClassification", "ViTConfig", IMAGE)),
    "deit": ("vit", _model("DeiTForImageClassification", "DeiTConfig", IMAGE)),
    "beit": ("vit", _model("BeitForImageClassification", "BeitConfig", IMAGE)),
    "dinov2": ("vit", _model("Dinov2ForImageClassification", "Dinov2Config", IMAGE)),
    "swin": ("vit", _model("SwinForImageClassification", "SwinConfig", IMAGE, patch_size=4, embed_dim=16,
                           depths=[2, 2], num_heads=[2, 4], window_size=4)),
    "clip_vision": ("vit", _model("CLIPVisionModel", "CLIPVisionConfig", IMAGE)),
    "siglip_vision": ("vit", _model("SiglipVisionModel", "SiglipVisionConfig", IMAGE)),
    "resnet": ("cnn", _model("ResNetForImageClassification", "ResNetConfig", IMAGE, embedding_size=16,
                             hidden_sizes=[16, 32], depths=[1, 1])),
    "convnext": ("cnn", _model("ConvNextForImageClassification", "ConvNextConfig", IMAGE, hidden_sizes=[16, 32],
                               depths=[1, 1], num_stages=2)),
    "mobilevit": ("cnn", _model("MobileViTForImageClassification", "MobileViTConfig", IMAGE,
                                hidden_sizes=[32, 40, 48], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64])),
    "segformer": ("cnn", _model("SegformerForImageClassification", "SegformerConfig", IMAGE, num_encoder_blocks=2,
                                depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], num_attention_heads=[1, 2],
                                patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2])),
}
FAST = ["llama", "gemma", "phi3", "gpt2", "gpt_neox", "qwen3_moe", "bert", "albert", "distilbert", "t5", "bart",
        "vit", "swin", "resnet"]
MODES = {"width": dict(pruning_ratio=0.3), "heads": dict(pruning_ratio=0.0, prune_num_heads=True,
                                                         head_pruning_ratio=0.5)}
NO_ATTENTION = {"resnet", "convnext"}  # no heads to prune: width only
# Cases the plugin cannot prune (yet): they must still run, save and reload, and say so in a warning.
KEPT = {("bloom", "heads"): "ALiBi slopes belong to head positions"}
# The warning of a kept case must say why: it names this.
KEPT_BECAUSE = {("bloom", "heads"): "ALiBi slopes"}
HEAD_FIELDS = ("num_attention_heads", "n_head", "num_heads", "n_heads", "encoder_attention_heads")


def primary(output: Any) -> torch.Tensor:
    """The logits, or the first tensor of a model without a head."""
    return output.logits if getattr(output, "logits", None) is not None else output[0]


def heads_of(model: nn.Module) -> Optional[int]:
    """Attention heads of the whole model, read off the modules (configs of plugin-form saves keep the old)."""
    total = 0
    for module in model.modules():
        for field in HEAD_FIELDS:
            value = vars(module).get(field)
            if isinstance(value, int) and not isinstance(value, bool):
                total += value
                break
    return total or None


def widths(model: nn.Module, side: str = "out") -> Dict[str, int]:
    """Output (or input) width of every weight layer (GPT-2's Conv1D keeps its weight transposed)."""
    def width(module: nn.Module) -> int:
        transposed = isinstance(getattr(module, "nf", None), int)
        return module.weight.shape[int(transposed) if side == "out" else int(not transposed)]
    return {name: width(module) for name, module in model.named_modules()
            if not isinstance(module, nn.Embedding) and isinstance(getattr(module, "weight", None), torch.Tensor)
            and module.weight.ndim >= 2}


def prune_case(name: str, mode: str, directory: str) -> Dict[str, Any]:
    """Prune ``name`` by ``mode``, check it in process and save it; the result row (reload comes later)."""
    category, build = ARCHS[name]
    torch.manual_seed(0)
    row: Dict[str, Any] = {"arch": name, "category": category, "mode": mode}
    try:
        model, inputs = build()
    except Exception as exc:
        row["error"] = f"build: {type(exc).__name__}: {str(exc)[:300]}"
        return row
    model.eval()
    row["class"] = type(model).__name__
    with torch.no_grad():
        before = primary(model(**inputs))
    params, heads, shapes, ins = tp.utils.count_params(model), heads_of(model), widths(model), widths(model, "in")
    experts = sum(p.numel() for p in model.parameters() if p.ndim == 3 and p.shape[0] > 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            tp.pruner.BasePruner(model, inputs, **MODES[mode]).step()
        except Exception as exc:  # recorded: the matrix reports what fails
            row["error"] = f"prune: {type(exc).__name__}: {str(exc)[:300]}"
            return row
    row["warnings"] = sorted({str(w.message)[:160] for w in caught if issubclass(w.category, PruningWarning)})
    row["kept"] = round(tp.utils.count_params(model) / params, 3)
    row["heads"] = (heads, heads_of(model))
    after = widths(model)
    ratios = [after[k] / shapes[k] for k in shapes if k in after and after[k] < shapes[k]]
    row["pruned_layers"] = f"{len(ratios)}/{len(shapes)}"
    if experts:  # fused 3-D expert weights (transformers 5 mixture-of-experts)
        row["experts_kept"] = round(sum(p.numel() for p in model.parameters()
                                        if p.ndim == 3 and p.shape[0] > 1) / experts, 3)
    row["width_ratio"] = round(sorted(ratios)[len(ratios) // 2], 3) if ratios else 1.0
    inputs_after = widths(model, "in")
    narrower = [inputs_after[k] / ins[k] for k in ins if k in inputs_after and inputs_after[k] < ins[k]]
    row["input_ratio"] = round(sorted(narrower)[len(narrower) // 2], 3) if narrower else 1.0
    try:
        with torch.no_grad():
            out = primary(model(**inputs))
        row["shape_ok"] = out.shape == before.shape
        if category in ("decoder", "moe"):
            generated = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
            row["generate_ok"] = generated.shape[1] == inputs["input_ids"].shape[1] + 3
        row["form"] = pruning_core_hf.save_pretrained(model, directory).form
        torch.save({"inputs": inputs, "logits": out}, os.path.join(directory, "expected.pt"))
    except Exception as exc:
        row["error"] = f"run/save: {type(exc).__name__}: {str(exc)[:300]}"
    return row


RELOAD = textwrap.dedent("""
    import json, sys, torch, transformers
    results = {}
    for directory, class_name, form in json.loads(sys.argv[1]):
        expected = torch.load(directory + "/expected.pt")
        try:
            if form == "stock":
                model = getattr(transformers, class_name).from_pretrained(directory)
            else:
                import pruning_core_hf
                model = pruning_core_hf.from_pretrained(directory)
            with torch.no_grad():
                out = model.eval()(**expected["inputs"])
            out = out.logits if getattr(out, "logits", None) is not None else out[0]
            results[directory] = float((out - expected["logits"]).abs().max())
        except Exception as exc:
            results[directory] = f"{type(exc).__name__}: {str(exc)[:300]}"
    print(json.dumps(results))
""")


def reload_all(rows: List[Dict[str, Any]], directories: List[str]) -> None:
    """Load every saved case in one fresh process: stock transformers for the stock form."""
    todo = [(d, r["class"], r["form"]) for r, d in zip(rows, directories) if "form" in r]
    if not todo:
        return
    result = subprocess.run([sys.executable, "-c", RELOAD, json.dumps(todo)], capture_output=True, text=True,
                            timeout=1800, env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    for row, directory in zip(rows, directories):
        if directory in found:
            row["reload"] = found[directory]


def check(row: Dict[str, Any]) -> List[str]:
    """What is wrong with a case, empty when it passes."""
    if "error" in row:
        return [row["error"]]
    problems = []
    if not row.get("shape_ok"):
        problems.append("output shape changed")
    if row["category"] in ("decoder", "moe") and not row.get("generate_ok"):
        problems.append("generate failed")
    if (row["arch"], row["mode"]) in KEPT:
        if not row["warnings"]:
            problems.append(f"kept silently ({KEPT[row['arch'], row['mode']]}): no warning")
        elif not any(KEPT_BECAUSE[row["arch"], row["mode"]] in message for message in row["warnings"]):
            problems.append(f"kept ({KEPT[row['arch'], row['mode']]}) but no warning says so: {row['warnings']}")
    elif row["mode"] == "width" and not 0.6 <= row["width_ratio"] <= 0.8:
        problems.append(f"width ratio {row['width_ratio']} (pruned layers {row['pruned_layers']})")
    elif row["mode"] == "width" and not row.get("experts_kept", 0.5) <= 0.6:  # hidden and expert width both 0.7
        problems.append(f"fused experts kept {row['experts_kept']} of their weights")
    elif row["mode"] == "heads" and not (0.4 <= row["width_ratio"] <= 0.6 or 0.4 <= row["input_ratio"] <= 0.6):
        # the projections lost half their heads (multi-query attention keeps its key/value rows: then the
        # output projection, reading the heads, tells)
        problems.append(f"heads: width ratio {row['width_ratio']} (pruned layers {row['pruned_layers']}, "
                        f"heads {row['heads']})")
    reload = row.get("reload")
    if not isinstance(reload, float) or reload > 1e-4:
        problems.append(f"reload ({row.get('form')}): {reload}")
    return problems


def run_cases(cases: List[Tuple[str, str]], root: str) -> List[Dict[str, Any]]:
    rows, directories = [], []
    for index, (name, mode) in enumerate(cases):
        directory = os.path.join(root, f"{index}-{name}-{mode}")
        rows.append(prune_case(name, mode, directory))
        directories.append(directory)
    reload_all(rows, directories)
    return rows


def _cases(names: List[str]) -> List[Tuple[str, str]]:
    return [(name, mode) for name in names for mode in MODES if not (mode == "heads" and name in NO_ATTENTION)]


@pytest.fixture(scope="module")
def fast_rows(tmp_path_factory):
    return {(r["arch"], r["mode"]): r for r in run_cases(_cases(FAST), str(tmp_path_factory.mktemp("matrix")))}


@pytest.mark.parametrize("case", _cases(FAST), ids="-".join)
def test_fast_matrix(case, fast_rows):
    assert check(fast_rows[case]) == []


@pytest.mark.slow
def test_every_architecture(tmp_path):
    rows = run_cases(_cases([n for n in ARCHS if n not in FAST]), str(tmp_path))
    failures = {f"{r['arch']}/{r['mode']}": check(r) for r in rows if check(r)}
    assert failures == {}


def table(rows: List[Dict[str, Any]]) -> str:
    """The README table: one line per architecture, both modes."""
    by_arch: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for row in rows:
        by_arch.setdefault(row["arch"], {})[row["mode"]] = row
    lines = ["| architecture | class | width 0.3 | heads 0.5 | width: saved form loads with | "
             "heads: saved form loads with |", "|---|---|---|---|---|---|"]
    for arch, modes in by_arch.items():
        cells, forms = [], []
        for mode in MODES:
            row = modes.get(mode)
            if row is None:
                cells.append("-")
                forms.append("-")
                continue
            problems = check(row)
            if problems:
                cells.append("fail: " + problems[0][:70].replace("|", "/"))
            elif (arch, mode) in KEPT:
                cells.append(f"kept, with a warning ({KEPT[arch, mode]})")
            else:
                cells.append(f"pass ({row['kept']:.2f} of parameters kept)")
            forms.append({"stock": "stock transformers", None: "-"}.get(row.get("form"), "pruning_core_hf only"))
        first = modes[next(iter(modes))]
        lines.append(f"| {arch} | {first.get('class', '-')} | {cells[0]} | {cells[1]} | {forms[0]} | {forms[1]} |")
    return "\n".join(lines)


def write_readme(section: str, path: str) -> None:
    """Replace the text between the matrix markers of ``path`` with ``section``."""
    start, end = "<!-- hf-matrix:start -->", "<!-- hf-matrix:end -->"
    with open(path) as handle:
        text = handle.read()
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    with open(path, "w") as handle:
        handle.write(f"{head}{start}\n{section}\n{end}{tail}")


if __name__ == "__main__":  # python test_hf_matrix.py [ARCH ...] [--readme README.md]
    args = sys.argv[1:]
    readme = args[args.index("--readme") + 1] if "--readme" in args else None
    names = [a for a in args if not a.startswith("--") and a != readme] or list(ARCHS)
    with tempfile.TemporaryDirectory() as root:
        results = run_cases(_cases(names), root)
    for result in results:
        print(json.dumps({k: v for k, v in result.items() if k != "warnings"}, default=str), check(result))
        for message in result.get("warnings", []):
            print("   warning:", message)
    print(table(results))
    if readme:
        write_readme(table(results), readme)
