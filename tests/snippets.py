"""README.md code blocks marked ``<!-- snippet: NAME -->``, for the tests that run them."""
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def readme_snippet(name: str) -> str:
    """The source of the fenced code block right after ``<!-- snippet: name -->`` in README.md."""
    m = re.search(rf"<!-- snippet: {re.escape(name)} -->\s*```[\w-]*\n(.*?)\n```", README.read_text(), re.S)
    if m is None:
        raise LookupError(f"README.md has no code block marked <!-- snippet: {name} -->")
    return m.group(1)
