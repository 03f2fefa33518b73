"""The README documents every setting the code reads."""

from pathlib import Path

from unlearnd.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_documented_with_its_default():
    for name, field in Settings.model_fields.items():
        variable = f"UNLEARND_{name.upper()}"
        rows = [line for line in README.splitlines() if line.startswith(f"| `{variable}` |")]
        assert rows, f"{variable} is not in the README settings table"
        default = field.default
        if isinstance(default, bool):
            default = str(default).lower()
        documented = rows[0].split("|")[2].strip().strip("`")
        accepted = (str(default), "unset" if default is None else "", f"./{default}")
        assert documented in accepted, (variable, documented)


def test_relative_links_in_the_docs_point_at_files_that_exist():
    import re

    root = Path(__file__).resolve().parents[2]
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" not in target:
                assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"
