// A small Markdown renderer that never parses model output as HTML: it builds DOM nodes and puts
// every piece of text in with textContent, so "<script>" or "<img onerror>" stays visible text.
// Covers what chat answers use: fenced code, paragraphs, headings, lists, `code`, **bold**, *em*.
"use strict";

const TokenwireMarkdown = (() => {
  const INLINE = /(`[^`\n]+`|\*\*[^*\n]+\*\*|\*[^*\n]+\*)/;

  function inline(parent, text) {
    for (const piece of text.split(INLINE)) {
      if (!piece) continue;
      let node;
      if (piece.startsWith("`") && piece.endsWith("`") && piece.length > 2) {
        node = document.createElement("code");
        node.textContent = piece.slice(1, -1);
      } else if (piece.startsWith("**") && piece.endsWith("**") && piece.length > 4) {
        node = document.createElement("strong");
        node.textContent = piece.slice(2, -2);
      } else if (piece.startsWith("*") && piece.endsWith("*") && piece.length > 2) {
        node = document.createElement("em");
        node.textContent = piece.slice(1, -1);
      } else {
        node = document.createTextNode(piece);
      }
      parent.appendChild(node);
    }
  }

  function block(fragment, lines) {
    if (!lines.length) return;
    const first = lines[0];
    const heading = /^(#{1,6})\s+(.*)$/.exec(first);
    if (heading && lines.length === 1) {
      const h = document.createElement("h" + Math.min(heading[1].length + 2, 6));
      inline(h, heading[2]);
      fragment.appendChild(h);
      return;
    }
    const bullet = /^\s*[-*+]\s+/, numbered = /^\s*\d+[.)]\s+/;
    const kind = lines.every((l) => bullet.test(l)) ? "ul" : lines.every((l) => numbered.test(l)) ? "ol" : null;
    if (kind) {
      const list = document.createElement(kind);
      for (const line of lines) {
        const item = document.createElement("li");
        inline(item, line.replace(kind === "ul" ? bullet : numbered, ""));
        list.appendChild(item);
      }
      fragment.appendChild(list);
      return;
    }
    const p = document.createElement("p");
    lines.forEach((line, i) => {
      if (i) p.appendChild(document.createElement("br"));
      inline(p, line);
    });
    fragment.appendChild(p);
  }

  function render(text) {
    const fragment = document.createDocumentFragment();
    const parts = text.split(/^```/m);  // even parts: prose; odd parts: "lang\ncode" (maybe unclosed)
    parts.forEach((part, index) => {
      if (index % 2 === 1) {
        const newline = part.indexOf("\n");
        const pre = document.createElement("pre");
        const code = document.createElement("code");
        code.textContent = newline < 0 ? "" : part.slice(newline + 1).replace(/\n$/, "");
        const lang = (newline < 0 ? part : part.slice(0, newline)).trim();
        if (lang) code.dataset.lang = lang;
        pre.appendChild(code);
        fragment.appendChild(pre);
        return;
      }
      let lines = [];
      for (const line of part.replace(/^\n/, "").split("\n")) {
        if (line.trim() === "") { block(fragment, lines); lines = []; } else { lines.push(line); }
      }
      block(fragment, lines);
    });
    return fragment;
  }

  return { render };
})();
