"""Output quality: what each quant and each runtime costs, keyed like the speed data.

Three measurements, stored as rows that carry the speed tables' run identity
(store.IDENTITY), so quality joins speed and file size on hardware, runtime, model, quant:

- fidelity (perplexity.py): `llama-perplexity` scores the evaluation text (evaltext.py)
  with the highest-precision file of a model and saves its token distributions; every
  other quant is then compared with them: perplexity, mean KL divergence, top-1 token
  agreement ("same top p").
- task accuracy (questions.py, ask.py): a question set with checkable answers, sent
  through a runtime's OpenAI-compatible API at temperature 0.
- agreement: the same continuation prompts through two runtime cells of one model and
  quant (llama.cpp with 8 slots vs 1 slot by default); derived from the stored answers.

runner.py measures a scenario and writes the runs; what the quality page reads is in
the report package (report/quality.py, report/quality_prose.py). The names below are the package's public surface (the CLI, the
notebook and the tests use them as `quality.<name>`).
"""

from gaplab.provision import SetupError
from gaplab.quality.ask import Answer, accuracy_rows, ask_all, continue_all, task_request
from gaplab.quality.evaltext import EVAL_TEXT, QUALITY_DIR, TextSource, eval_text
from gaplab.quality.perplexity import (
                                       CHUNKS,
                                       CTX,
                                       TOOL_THREADS,
                                       FidelityResult,
                                       ToolOutputError,
                                       fidelity,
                                       parse_base,
                                       parse_kld,
                                       perplexity_command,
                                       reference_quant,
)
from gaplab.quality.questions import (
                                       AGREE_PROMPTS,
                                       AGREE_TOKENS,
                                       AGREE_WORDS,
                                       EVAL_SEED,
                                       EVAL_SET,
                                       EVAL_SIZE,
                                       FEW_SHOT,
                                       MAX_TOKENS,
                                       EvalSetError,
                                       Item,
                                       chat_messages,
                                       completion_prompt,
                                       continuation_items,
                                       load_eval_set,
                                       make_eval_set,
                                       score,
                                       wilson,
                                       write_eval_set,
)
from gaplab.quality.runner import QualityResult, measure

__all__ = [
    "AGREE_PROMPTS", "AGREE_TOKENS", "AGREE_WORDS", "Answer", "CHUNKS", "CTX", "EVAL_SEED", "EVAL_SET", "EVAL_SIZE",
    "EVAL_TEXT", "EvalSetError", "FEW_SHOT", "FidelityResult", "Item", "MAX_TOKENS", "QUALITY_DIR",
    "QualityResult", "SetupError", "TOOL_THREADS", "TextSource", "ToolOutputError", "accuracy_rows",
    "ask_all", "chat_messages", "completion_prompt",
    "continuation_items", "continue_all", "eval_text",
    "fidelity", "load_eval_set", "make_eval_set", "measure",
    "parse_base", "parse_kld", "perplexity_command",
    "reference_quant", "score",
    "task_request", "wilson", "write_eval_set",
]
