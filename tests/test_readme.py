"""The README's code runs as written, so it cannot drift from the library.

Each section's ``python`` blocks run in order in one namespace, in a temporary directory. Where
the prose supplies a name (a data loader, "your" model) or the code names a download or a path,
:data:`GIVEN` supplies it: small random models and data, never a download. A new block in a
section not listed here runs with nothing given, so it must be self-contained. Every documented
``pruning-core`` command line is parsed and checked by the real argument parser.
"""

from __future__ import annotations

import os
import re
import shlex
from typing import Dict, List, Tuple

import pytest
import torch

import pruning_core as tp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def sections() -> List[Tuple[str, str, List[str]]]:
    """(section title, language, code) for every fenced block, in order."""
    blocks = []
    title = ""
    text = open(README, encoding="utf-8").read()
    for match in re.finditer(r"^(#{2,3} [^\n]*)$|^```(\w*)\n(.*?)^```", text, flags=re.M | re.S):
        if match.group(1):
            title = match.group(1).lstrip("#").strip()
        else:
            blocks.append((title, match.group(2), match.group(3)))
    grouped: Dict[str, List[str]] = {}
    for title, language, code in blocks:
        if language == "python":
            grouped.setdefault(title, []).append(code)
    return [(title, "python", codes) for title, codes in grouped.items()]


def _tiny_llama(directory: str) -> None:
    import transformers

    config = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=64)
    transformers.LlamaForCausalLM(config).save_pretrained(directory)


def _given_hf(code: str, workdir: str) -> str:
    _tiny_llama(os.path.join(workdir, "llama"))
    return code.replace('"path/to/llama"', repr(os.path.join(workdir, "llama")))


# Names the prose supplies, per section: code run before a block (by its index in the section),
# a rewrite of the block (paths the README names), and checks of what the block's comments promise.
GIVEN = {
    "Save and load without pickle": {"before": {0: "import torch\nfrom torchvision.models import resnet18\n"
                                                   "import pruning_core as tp\n"
                                                   "pruned_model = _minimal_example()\n"},
                                     "after": {0: "assert tp.utils.count_params(new_model) == "
                                                  "tp.utils.count_params(pruned_model)\n"}},
    "High-level pruners": {"after": {0: "assert macs < base_macs / 3 and params < base_params / 3\n"},
                           "before": {1: "import torch.nn.functional as F\nepochs = 1\n"
                                         "train_loader = [(torch.randn(2, 3, 64, 64), torch.randint(0, 1000, (2,)))]\n"
                                         "optimizer = torch.optim.SGD(model.parameters(), lr=0.01)\n"}},
    "Importance criteria": {"before": {0: "import torch, torchvision\nimport pruning_core as tp\n"
                                          "model = torchvision.models.resnet18().eval()\n"
                                          "calibration_loader = [(torch.randn(2, 3, 64, 64), None)] * 2\n"}},
    "Hugging Face transformers (`pip install \"pruning-core[hf]\"`)": {
        "rewrite": _given_hf, "after": {0: "assert model.config.num_attention_heads < 8\n"
                                           "assert model.config.pruning_core == {'uniform': True}\n"}},
}
def _given_checkpoint(code: str, workdir: str) -> str:
    import transformers

    config = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=64)
    transformers.LlamaForCausalLM(config).save_pretrained(os.path.join(workdir, "llama-7b"))
    code = code.replace('"path/to/llama-7b"', repr(os.path.join(workdir, "llama-7b")))
    return code.replace("calibration=texts,", "calibration=4,")  # the tiny checkpoint has no tokenizer


GIVEN["Checkpoints larger than memory"] = {
    "rewrite": _given_checkpoint,
    "after": {0: "import transformers\n"
                 "pruned = transformers.AutoModelForCausalLM.from_pretrained('llama-7b-pruned')\n"
                 "assert result.form == 'stock' and pruned.config.num_attention_heads == 4\n"
                 "assert pruned.config.intermediate_size < 128\n"}}
SLOW = {"Checkpoints larger than memory", "Ultralytics YOLO (`pip install \"pruning-core[yolo]\"`)", "High-level pruners",
        "Hugging Face transformers (`pip install \"pruning-core[hf]\"`)"}
NEEDS = {"Checkpoints larger than memory": "transformers",
         "Ultralytics YOLO (`pip install \"pruning-core[yolo]\"`)": "ultralytics",
         "Hugging Face transformers (`pip install \"pruning-core[hf]\"`)": "transformers"}


def _minimal_example():
    """The README's first example, as a function: a pruned resnet18 for the save/load section."""
    namespace: Dict[str, object] = {}
    exec(compile(dict((t, c) for t, _, c in sections())["A minimal example of DepGraph"][0], "README", "exec"),
         namespace)
    return namespace["model"]


def _params():
    out = []
    for title, _, codes in sections():
        marks = [pytest.mark.slow] if title in SLOW else []
        out.append(pytest.param(title, codes, id=re.sub(r"\W+", "-", title).strip("-").lower()[:40], marks=marks))
    return out


@pytest.mark.parametrize("title,codes", _params())
def test_readme_python_blocks_run(title, codes, tmp_path, monkeypatch):
    if title in NEEDS:
        pytest.importorskip(NEEDS[title])
    monkeypatch.chdir(tmp_path)
    given = GIVEN.get(title, {})
    namespace: Dict[str, object] = {"__name__": "readme", "_minimal_example": _minimal_example}
    for index, code in enumerate(codes):
        if "rewrite" in given:
            code = given["rewrite"](code, str(tmp_path))
        if index in given.get("before", {}):
            exec(given["before"][index], namespace)
        torch.manual_seed(0)
        exec(compile(code, f"README.md [{title}] block {index}", "exec"), namespace)
        if index in given.get("after", {}):  # what the block's comments promise
            exec(given["after"][index], namespace)


def test_every_section_with_given_names_still_exists():
    titles = {title for title, _, _ in sections()}
    assert set(GIVEN) | set(SLOW) <= titles, (set(GIVEN) | set(SLOW)) - titles


def command_lines() -> List[List[str]]:
    """Every ``pruning-core ...`` command in the README, in code blocks or inline code."""
    text = open(README, encoding="utf-8").read()
    found = re.findall(r"^pruning-core [^\n#]*", text, flags=re.M) + re.findall(r"`(pruning-core [^`]*)`", text)
    return [shlex.split(line.strip()) for line in found]


def test_documented_command_lines_parse_and_prune_ones_name_an_output():
    from pruning_core.cli import build_parser
    from pruning_core.cli.validate import check_model_argument

    lines = command_lines()
    prunes = [line for line in lines if len(line) > 1 and line[1] == "prune"]
    assert len(prunes) >= 4  # torchvision, timm, hf and yolo examples at least
    schemes = {line[2].split(":")[0] for line in prunes}
    assert {"torchvision", "timm", "hf", "yolo"} <= schemes
    parser = build_parser()
    for line in lines:
        if len(line) == 2 or "..." in " ".join(line):  # a reference to a subcommand, not a command line
            continue
        args = parser.parse_args(line[1:])  # exits (SystemExit) on an unknown or missing option
        if line[1] == "prune":
            assert args.output, line
            check_model_argument(args)
            assert 0 <= args.ratio < 1


def test_readme_states_the_measured_test_duration():
    text = open(README, encoding="utf-8").read()
    assert "about 4 minutes on 2 cores" not in text
    assert re.search(r"`make test` runs everything .* \(about \d+ minutes", text)
