"""MkDocs hook: README.md becomes the site's index and each plugins/NAME/README.md the page
plugins/NAME.md, read from where they live (so every results table has one home). Their links are
rewritten for the site: to another of these pages or into docs/ as a site link, and to any other
file of the repository as plain code text (the site does not hold source files)."""
import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)\)")


def site_page(repo_path):
    """The site page of a repository file, or None."""
    if repo_path == "README.md":
        return "index.md"
    if repo_path.startswith("docs/") and repo_path.endswith(".md"):
        return repo_path[len("docs/"):]
    m = re.fullmatch(r"plugins/([\w-]+)/README\.md", repo_path)
    return f"plugins/{m.group(1)}.md" if m else None


def rewrite(text, repo_path, page):
    def fix(m):
        label, target = m.group(1), m.group(2)
        if re.match(r"^[a-z]+:|^#", target):
            return m.group(0)
        path, _, anchor = target.partition("#")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(repo_path), path))
        dest = site_page(resolved)
        if dest is None:
            return label if label.startswith("`") else f"{label} (`{resolved}`)"
        rel = posixpath.relpath(dest, posixpath.dirname(page) or ".")
        return f"[{label}]({rel}{'#' + anchor if anchor else ''})"

    return LINK.sub(fix, text)


def on_files(files, config):
    root = Path(config["config_file_path"]).parent
    sources = ["README.md", *sorted(p.relative_to(root).as_posix() for p in root.glob("plugins/*/README.md"))]
    for repo_path in sources:
        page = site_page(repo_path)
        text = rewrite((root / repo_path).read_text(encoding="utf-8"), repo_path, page)
        files.append(File.generated(config, page, content=text))
    return files
