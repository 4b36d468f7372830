"""Built-in suites. Each area registers its suite here with `@register(name)`."""

from __future__ import annotations

from pathlib import Path

from medagent.evals.suite import Expected, Suite, SuiteItem, register

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@register("examples")
def examples_suite(data_dir: Path | None, limit: int | None) -> Suite:
    """The committed example cases in agent mode, with the tools each question calls for."""
    items = [
        SuiteItem(id="ct-dicom", case_path="ct_dicom_case.json", expected=Expected(required_tools=["imaging.describe"])),
        SuiteItem(id="ct-nifti", case_path="ct_nifti_case.json", expected=Expected(required_tools=["imaging.describe"])),
        SuiteItem(
            id="mr-nifti",
            case_path="mr_nifti_case.json",
            expected=Expected(required_tools=["imaging.describe"], forbidden_tools=["imaging.ct_quant"]),
        ),
        SuiteItem(
            id="history",
            case_path="history_case.json",
            expected=Expected(answer_labels=["Hirschsprung disease"], forbidden_tools=["imaging.describe", "imaging.ct_quant"]),
        ),
    ]
    return Suite(name="examples", items=items, base_dir=EXAMPLES, description="the example cases in examples/")
