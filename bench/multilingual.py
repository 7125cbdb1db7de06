"""Steps that are not plain English: which skills consult_handbook / route_step infer for translations of ten
English steps (German, French, Spanish, Chinese, Japanese, Russian, Arabic) against the shipped example handbook,
with the lexical and the semantic matcher, and for odd inputs (accents, NFD, CJK mixed with English, full-width
letters, emoji only, zero-width characters, RTL text).

Per language it prints how many steps got the English original's top skill ("as English"), a skill of the same
category ("partly") or nothing / another category ("not at all"), and then one line per odd input with the
skills_source route_step reports. Then handbooks written in Chinese and in Japanese (ten skills each, one step
demanding each skill): how many steps get their skill, and the lexical matcher's time per step for a 200-character
and a 32,000-character (TEXT_MAX) Chinese step against those ten skills and against 200.
Run: OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/multilingual.py [-v]
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from skillorchestra.handbook.example import example_document
from skillorchestra.handbook.inference import HandbookMatcher
from skillorchestra.handbook.matcher import LexicalMatcher
from skillorchestra.handbook.models import TEXT_MAX, Skill
from skillorchestra.handbook.request_types import RouteRequest
from skillorchestra.handbook.semantic import SemanticMatcher
from skillorchestra.handbook.service import Handbook
from skillorchestra.handbook.store import HandbookStore

SKILLS = [
    "math.word_problems",
    "code.python_functions",
    "knowledge.trivia",
    "logic.grid_puzzles",
    "writing.constrained_generation",
    "reasoning.graduate_science",
    "math.competition",
    "knowledge.open_domain_qa",
    "reasoning.commonsense",
    "reasoning.grade_school_science",
]

# the same ten steps, in SKILLS' order, per language (translations of the English ones)
STEPS: dict[str, list[str]] = {
    "en": [
        "A farmer has 12 cows and buys 5 more each week. How many cows does he have in total after 4 weeks?",
        "Write a Python function that returns the longest string in a list.",
        "Trivia question: which country hosted the first football World Cup?",
        "Solve this logic puzzle: five houses, each person has a pet; use the clues to find who owns the fish.",
        "Generate a sentence that uses all of these words: dog, frisbee, park, catch.",
        "Which quantum state of the molecule has the lowest energy after the reaction?",
        "Solve the equation x^2 - 5x + 6 = 0 and compute the sum of the integer solutions.",
        "Who wrote the novel War and Peace and when was it published?",
        "Where would someone likely feel cold if they forgot their coat?",
        "Science experiment: which of the following helps plants grow, heat or darkness?",
    ],
    "de": [
        "Ein Bauer hat 12 Kühe und kauft jede Woche 5 dazu. Wie viele Kühe hat er nach 4 Wochen insgesamt?",
        "Schreibe eine Python-Funktion, die den längsten String in einer Liste zurückgibt.",
        "Quizfrage: Welches Land war Gastgeber der ersten Fußball-Weltmeisterschaft?",
        "Löse dieses Logikrätsel: fünf Häuser, jede Person hat ein Haustier; finde mit den Hinweisen heraus, wem der"
        " Fisch gehört.",
        "Bilde einen Satz, der alle diese Wörter verwendet: Hund, Frisbee, Park, fangen.",
        "Welcher Quantenzustand des Moleküls hat nach der Reaktion die niedrigste Energie?",
        "Löse die Gleichung x^2 - 5x + 6 = 0 und berechne die Summe der ganzzahligen Lösungen.",
        "Wer schrieb den Roman Krieg und Frieden und wann wurde er veröffentlicht?",
        "Wo würde jemand wahrscheinlich frieren, wenn er seinen Mantel vergessen hat?",
        "Naturwissenschaftliches Experiment: Was hilft Pflanzen beim Wachsen, Wärme oder Dunkelheit?",
    ],
    "fr": [
        "Un fermier a 12 vaches et en achète 5 de plus chaque semaine. Combien de vaches a-t-il au total après 4"
        " semaines ?",
        "Écris une fonction Python qui renvoie la chaîne la plus longue d'une liste.",
        "Question de culture générale : quel pays a accueilli la première Coupe du monde de football ?",
        "Résous cette énigme logique : cinq maisons, chaque personne a un animal ; utilise les indices pour trouver"
        " qui possède le poisson.",
        "Génère une phrase qui utilise tous ces mots : chien, frisbee, parc, attraper.",
        "Quel état quantique de la molécule a l'énergie la plus basse après la réaction ?",
        "Résous l'équation x^2 - 5x + 6 = 0 et calcule la somme des solutions entières.",
        "Qui a écrit le roman Guerre et Paix et quand a-t-il été publié ?",
        "Où quelqu'un aurait-il probablement froid s'il avait oublié son manteau ?",
        "Expérience de sciences : lequel des éléments suivants aide les plantes à pousser, la chaleur ou l'obscurité ?",
    ],
    "es": [
        "Un granjero tiene 12 vacas y compra 5 más cada semana. ¿Cuántas vacas tiene en total después de 4 semanas?",
        "Escribe una función en Python que devuelva la cadena más larga de una lista.",
        "Pregunta de trivia: ¿qué país organizó la primera Copa Mundial de fútbol?",
        "Resuelve este acertijo lógico: cinco casas, cada persona tiene una mascota; usa las pistas para saber quién"
        " tiene el pez.",
        "Genera una oración que use todas estas palabras: perro, frisbee, parque, atrapar.",
        "¿Qué estado cuántico de la molécula tiene la energía más baja después de la reacción?",
        "Resuelve la ecuación x^2 - 5x + 6 = 0 y calcula la suma de las soluciones enteras.",
        "¿Quién escribió la novela Guerra y paz y cuándo se publicó?",
        "¿Dónde sentiría frío probablemente alguien si olvidó su abrigo?",
        "Experimento de ciencias: ¿cuál de los siguientes ayuda a crecer a las plantas, el calor o la oscuridad?",
    ],
    "zh": [
        "一个农民有12头牛，每周再买5头。4周后他一共有多少头牛？",
        "写一个Python函数，返回列表中最长的字符串。",
        "知识问答：哪个国家举办了第一届足球世界杯？",
        "解这个逻辑谜题：五栋房子，每个人养一只宠物；根据线索找出谁养鱼。",
        "用以下所有词语造一个句子：狗、飞盘、公园、接住。",
        "反应之后，该分子的哪个量子态能量最低？",
        "解方程 x^2 - 5x + 6 = 0，并计算整数解之和。",
        "谁写了小说《战争与和平》，它是什么时候出版的？",
        "如果有人忘了带外套，他可能在哪里会觉得冷？",
        "科学实验：以下哪一项有助于植物生长，热量还是黑暗？",
    ],
    "ja": [
        "農家は牛を12頭飼っていて、毎週5頭ずつ買い足します。4週間後には全部で何頭になりますか？",
        "リストの中で最も長い文字列を返すPython関数を書いてください。",
        "雑学クイズ：最初のサッカーワールドカップを開催した国はどこですか？",
        "この論理パズルを解いてください：5軒の家、各人がペットを飼っています。手がかりを使って魚を飼っているのは誰か"
        "見つけてください。",
        "次の単語をすべて使って文を作ってください：犬、フリスビー、公園、捕る。",
        "反応後、その分子のどの量子状態が最もエネルギーが低いですか？",
        "方程式 x^2 - 5x + 6 = 0 を解き、整数解の和を計算してください。",
        "小説『戦争と平和』を書いたのは誰で、いつ出版されましたか？",
        "コートを忘れた人は、どこで寒いと感じる可能性が高いですか？",
        "理科の実験：次のうち植物の成長を助けるのはどれですか、熱ですか暗闇ですか？",
    ],
    "ru": [
        "У фермера 12 коров, и каждую неделю он покупает ещё 5. Сколько всего коров у него будет через 4 недели?",
        "Напиши функцию на Python, которая возвращает самую длинную строку в списке.",
        "Вопрос викторины: какая страна принимала первый чемпионат мира по футболу?",
        "Реши эту логическую головоломку: пять домов, у каждого человека есть питомец; по подсказкам найди, кто"
        " держит рыбку.",
        "Составь предложение, в котором используются все эти слова: собака, фрисби, парк, ловить.",
        "Какое квантовое состояние молекулы имеет наименьшую энергию после реакции?",
        "Реши уравнение x^2 - 5x + 6 = 0 и вычисли сумму целых решений.",
        "Кто написал роман «Война и мир» и когда он был опубликован?",
        "Где человеку, вероятно, будет холодно, если он забыл пальто?",
        "Научный эксперимент: что из следующего помогает растениям расти, тепло или темнота?",
    ],
    "ar": [
        "لدى مزارع 12 بقرة ويشتري 5 أخرى كل أسبوع. كم بقرة سيكون لديه في المجموع بعد 4 أسابيع؟",
        "اكتب دالة بايثون تعيد أطول سلسلة نصية في قائمة.",
        "سؤال معلومات عامة: ما الدولة التي استضافت أول كأس عالم لكرة القدم؟",
        "حل هذا اللغز المنطقي: خمسة منازل، ولكل شخص حيوان أليف؛ استخدم الأدلة لمعرفة من يملك السمكة.",
        "كوّن جملة تستخدم كل هذه الكلمات: كلب، فريسبي، حديقة، يلتقط.",
        "أي حالة كمية للجزيء لها أدنى طاقة بعد التفاعل؟",
        "حل المعادلة x^2 - 5x + 6 = 0 واحسب مجموع الحلول الصحيحة.",
        "من كتب رواية الحرب والسلام ومتى نُشرت؟",
        "أين من المحتمل أن يشعر شخص ما بالبرد إذا نسي معطفه؟",
        "تجربة علمية: أي مما يلي يساعد النباتات على النمو، الحرارة أم الظلام؟",
    ],
}

# odd inputs: (label, text, its English twin: the plain form whose top skill it should get; None: no skill is right)
ODD: list[tuple[str, str, str | None]] = [
    ("accents NFC", "Écris une fonction Python", "Ecris une fonction Python"),
    ("same, NFD", "E\u0301cris une fonction Python", "Ecris une fonction Python"),
    ("NFD accent inside the one keyword", "py\u0301thon", "python"),
    ("Turkish capital I", "İMPLEMENT", "implement"),
    ("mixed zh+en, no spaces", "写一个Python函数", "python"),
    ("mixed ja+en, no spaces", "Python関数を書いて", "python"),
    ("full-width Latin (IME)", "ｐｙｔｈｏｎ ｆｕｎｃｔｉｏｎ", "python function"),
    ("full-width punctuation", "「trivia」？ which famous film， country！", "trivia which famous film country"),
    ("zero-width space in the keyword", "py\u200bthon", "python"),
    ("soft hyphen in the keyword", "multi\u00adlingual", "multilingual"),
    ("ligature", "ﬁnd the value", "find the value"),
    ("emoji only", "🐍🔢✨", None),
    ("emoji + English", "🐍 write a python function 🔢", "write a python function"),
    ("RTL with bidi mark", "\u200fاكتب دالة Python", "python"),
    ("code only", "def f(xs):\n    return sorted(xs)[-1]", "def f(xs):\n    return sorted(xs)[-1]"),
]

# a handbook written in the step's language: four skills per language, each step demands the first (lexical and
# semantic against skill texts in the same language, not against English ones)
NATIVE: dict[str, tuple[list[tuple[str, str]], list[str]]] = {
    "de": (
        [
            ("code.funktionen", "Python-Funktionen schreiben, die Listen und Zeichenketten verarbeiten"),
            ("mathe.textaufgaben", "Textaufgaben mit mehreren Rechenschritten lösen"),
            ("wissen.geschichte", "Fragen zur Geschichte und Geografie beantworten"),
            ("schreiben.saetze", "Einen Satz bilden, der alle vorgegebenen Wörter verwendet"),
        ],
        ["Schreibe eine Funktion in Python, die eine Liste sortiert", "Schreib Python-Funktionen für Listen"],
    ),
    "zh": (
        [
            ("code.functions", "编写处理列表和字符串的Python函数"),
            ("math.word_problems", "解答需要多步计算的数学应用题"),
            ("knowledge.history", "回答关于历史和地理的问题"),
            ("writing.sentences", "用给定的所有词语造一个句子"),
        ],
        ["写一个函数，对列表进行排序", "编写一个处理字符串的函数"],
    ),
    "ru": (
        [
            ("code.functions", "Написание функций на Python для обработки списков и строк"),
            ("math.word_problems", "Решение текстовых задач с несколькими шагами вычислений"),
            ("knowledge.history", "Ответы на вопросы по истории и географии"),
            ("writing.sentences", "Составить предложение из всех заданных слов"),
        ],
        ["Напиши функцию, которая сортирует список", "Написание функций для списков"],
    ),
}


# handbooks written in Chinese or Japanese, hand-written: (skill id, description, indicators, a step demanding it)
CJK_BOOKS: dict[str, list[tuple[str, str, list[str], str]]] = {
    "zh": [
        (
            "code.python_functions",
            "编写Python函数：处理列表、字典和字符串，返回结果",
            ["写一个函数", "代码实现"],
            "请写一个函数，把列表中的字符串按长度从短到长排序。",
        ),
        (
            "math.word_problems",
            "解答需要多步计算的数学应用题",
            ["一共有多少", "每天", "还剩多少"],
            "商店每天卖出30个苹果，一周一共卖出多少个苹果？",
        ),
        (
            "math.equations",
            "解方程和方程组，求未知数的值",
            ["求解x", "一元二次方程"],
            "求解方程组：2x + y = 7，x - y = 2。",
        ),
        (
            "translation.en_zh",
            "把英文翻译成中文，保持原文的语气",
            ["翻译成中文", "英译中"],
            "请把这段英文翻译成中文：The weather is nice today.",
        ),
        (
            "writing.summary",
            "为长篇文章写简短的摘要，概括要点",
            ["总结", "概括"],
            "请用三句话概括下面这篇文章的主要内容。",
        ),
        ("writing.poetry", "创作诗歌，包括古诗、绝句和现代诗", ["写一首诗", "押韵"], "以春天为题写一首七言绝句。"),
        (
            "knowledge.history",
            "回答关于中国和世界历史的问题，例如朝代、战争和人物",
            ["哪一年", "哪个朝代"],
            "唐朝是哪一年建立的？开国皇帝是谁？",
        ),
        (
            "knowledge.geography",
            "回答地理问题：国家、首都、河流和山脉",
            ["首都是", "最长的河流"],
            "世界上最长的河流是哪一条？它流经哪些国家？",
        ),
        (
            "reasoning.logic_puzzles",
            "解逻辑谜题和推理题，根据线索推出答案",
            ["谁说了真话", "根据线索"],
            "甲、乙、丙三人中只有一人说了真话，请根据线索推理出谁是小偷。",
        ),
        (
            "data.sql_queries",
            "编写SQL查询语句，从数据库表中筛选和统计数据",
            ["查询", "数据库"],
            "写一条查询语句，统计订单表中每个客户的订单数量。",
        ),
    ],
    "ja": [
        (
            "code.python_functions",
            "Pythonの関数を書く：リストや文字列を処理する",
            ["関数を書いて", "コードを実装"],
            "リストの中の重複を取り除く関数を書いてください。",
        ),
        (
            "math.word_problems",
            "複数の計算が必要な算数の文章題を解く",
            ["全部で何個", "合計"],
            "りんごを1日に3個ずつ食べると、1週間で全部で何個食べますか？",
        ),
        (
            "math.equations",
            "方程式や連立方程式を解き、未知数の値を求める",
            ["xを求めよ", "二次方程式"],
            "連立方程式 x + y = 10, x - y = 4 を解いてください。",
        ),
        (
            "translation.en_ja",
            "英語の文章を自然な日本語に翻訳する",
            ["日本語に訳して", "和訳"],
            "次の英文を日本語に訳してください：I like reading books.",
        ),
        (
            "writing.summary",
            "長い文章の要点をまとめて短い要約を書く",
            ["要約して", "まとめて"],
            "この記事を三行で要約してください。",
        ),
        ("writing.haiku", "俳句や短歌などの詩を作る", ["五七五", "季語"], "秋の季語を使って俳句を一句詠んでください。"),
        (
            "knowledge.history",
            "日本史や世界史の出来事、人物、年代についての質問に答える",
            ["何年", "時代"],
            "江戸幕府を開いたのは誰で、何年のことですか？",
        ),
        (
            "knowledge.geography",
            "国、首都、川、山など地理についての質問に答える",
            ["首都はどこ", "一番高い山"],
            "オーストラリアの首都はどこですか？",
        ),
        (
            "reasoning.logic_puzzles",
            "手がかりから答えを推理する論理パズルを解く",
            ["推理して", "嘘をついている"],
            "三人のうち一人だけが嘘をついています。手がかりから犯人を推理してください。",
        ),
        (
            "data.sql_queries",
            "データベースのテーブルからデータを抽出・集計するSQLクエリを書く",
            ["クエリ", "テーブル"],
            "注文テーブルから顧客ごとの注文数を集計するクエリを書いてください。",
        ),
    ],
}


def category(skill: str | None) -> str | None:
    return None if skill is None else skill.split(".")[0]


def top_skill(book: Handbook, text: str) -> tuple[str | None, list[tuple[str, float]], str]:
    decision = book.route(RouteRequest(text=text, top_k=3))
    used = [(s.skill_id, round(s.weight, 2)) for s in decision.skills]
    return (used[0][0] if used else None), used, decision.skills_source


def main() -> None:
    verbose = "-v" in sys.argv
    with tempfile.TemporaryDirectory() as tmp:
        store = HandbookStore(Path(tmp) / "h.db")
        store.create_version(example_document(), source="import")
        books = {
            "lexical": Handbook(store, matcher=HandbookMatcher(store, LexicalMatcher(store))),
            "semantic": Handbook(store, matcher=HandbookMatcher(store, SemanticMatcher(store))),
        }
        english = {name: [top_skill(book, t)[0] for t in STEPS["en"]] for name, book in books.items()}
        for name in books:
            hits = sum(top == want for top, want in zip(english[name], SKILLS, strict=True))
            print(f"{name}: English originals with the intended top skill: {hits}/{len(SKILLS)}")
        print(f"\n{'lang':<5} {'matcher':<9} {'as English':>10} {'partly':>7} {'not at all':>10}  sources")
        for lang, texts in STEPS.items():
            for name, book in books.items():
                same = partly = none = 0
                sources: dict[str, int] = {}
                for text, want in zip(texts, english[name], strict=True):
                    top, used, source = top_skill(book, text)
                    sources[source] = sources.get(source, 0) + 1
                    if top == want:
                        same += 1
                    elif top is not None and category(top) == category(want):
                        partly += 1
                    else:
                        none += 1
                    if verbose and top != want:
                        print(f"    {lang} {name}: {text[:50]!r} -> {used} ({source}); English: {want}")
                shown = ", ".join(f"{s} x{n}" for s, n in sources.items())
                print(f"{lang:<5} {name:<9} {same:>10} {partly:>7} {none:>10}  {shown}")
        print("\nodd inputs (route_step's skills and skills_source)")
        for label, text, twin in ODD:
            for name, book in books.items():
                top, used, source = top_skill(book, text)
                want = top_skill(book, twin)[0] if twin is not None else None
                verdict = "ok" if top == want else ("partly" if category(top) == category(want) else "MISS")
                print(f"  {label:<33} {name:<9} {verdict:<6} {used} [{source}]")
        print("\na handbook in the step's language (top skill of each step; the first skill is the right one)")
        for lang, (skills, steps) in NATIVE.items():
            native = HandbookStore(Path(tmp) / f"{lang}.db")
            native_book = Handbook(native)
            for skill_id, description in skills:
                native_book.upsert_skill(Skill(id=skill_id, mode="answer", description=description))
            for name, matcher in (("lexical", LexicalMatcher(native)), ("semantic", SemanticMatcher(native))):
                found = [matcher.infer(step, None, 3) for step in steps]
                shown = "; ".join(f"{w[0][0] if w else None} [{src}]" for w, src in found)
                print(
                    f"  {lang} {name:<9} {sum(bool(w) and w[0][0] == skills[0][0] for w, _ in found)}/{len(steps)}"
                    f"  {shown}"
                )
            native.close()
        cjk_books(Path(tmp), verbose)
        store.close()


def cjk_books(tmp: Path, verbose: bool) -> None:
    """Each CJK_BOOKS handbook: steps that got their own skill, per matcher; then the lexical time per step."""
    print("\nhandbooks written in Chinese / Japanese (steps whose top skill is the one they demand)")
    for lang, rows in CJK_BOOKS.items():
        native = HandbookStore(tmp / f"cjk-{lang}.db")
        native_book = Handbook(native)
        for skill_id, description, indicators, _ in rows:
            native_book.upsert_skill(Skill(id=skill_id, mode="answer", description=description, indicators=indicators))
        for name, matcher in (("lexical", LexicalMatcher(native)), ("semantic", SemanticMatcher(native))):
            found = [(skill_id, step, *matcher.infer(step, None, 3)) for skill_id, _, _, step in rows]
            hits = sum(bool(w) and w[0][0] == skill_id for skill_id, _, w, _ in found)
            sources = sorted({src.split(" (")[0] for _, _, _, src in found})
            print(f"  {lang} {name:<9} {hits}/{len(rows)}  sources: {', '.join(sources)}")
            for skill_id, step, w, _ in found:
                if verbose and not (w and w[0][0] == skill_id):
                    print(f"    {step[:30]!r} wants {skill_id}, got {[(s, round(v, 2)) for s, v in w]}")
        native.close()
    print(
        "\nlexical matcher, median ms per Chinese step: the whole match, and its bigram part (cjk.score);"
        "\n'steps' = the ten steps above repeated, 'random' = seeded random ideographs of them (~20,000 distinct"
        " bigrams at 32,000)"
    )
    steps = "".join(step for *_, step in CJK_BOOKS["zh"])
    ideographs = sorted({c for *_, step in CJK_BOOKS["zh"] for c in step if "\u4e00" <= c <= "\u9fff"})
    rng = random.Random(0)
    shuffled = "".join(rng.choice(ideographs) for _ in range(TEXT_MAX))
    for n_skills in (10, 200):
        big = HandbookStore(tmp / f"cjk-time-{n_skills}.db")
        big_book = Handbook(big)
        for i in range(n_skills):
            skill_id, description, indicators, _ = CJK_BOOKS["zh"][i % 10]
            other = CJK_BOOKS["zh"][(i * 7 + 3) % 10][1]  # another skill's words: distinct texts per skill
            big_book.upsert_skill(
                Skill(
                    id=f"{skill_id}_{i}",
                    mode="answer",
                    description=f"{description}；{other[: 5 + i % 9]}",
                    indicators=indicators,
                )
            )
        matcher = LexicalMatcher(big)
        started = time.perf_counter()
        matcher.match(steps[:200], None, 3)
        first = (time.perf_counter() - started) * 1000
        bigram_part = getattr(getattr(matcher, "cjk", None), "score", None)  # None: a tree without it
        for kind, source in (("steps", steps * (TEXT_MAX // len(steps) + 1)), ("random", shuffled)):
            for length in (200, TEXT_MAX):
                text = source[:length]
                whole = median_ms(lambda text=text, match=matcher.match: match(text, None, 3))
                part = (
                    f"{median_ms(lambda text=text, score=bigram_part: score(text, None)):7.3f}"
                    if bigram_part
                    else "    -"
                )
                print(f"  {n_skills:>3} skills, {kind:<6} {length:>6} characters: {whole:7.3f} ms, bigrams {part} ms")
        print(f"  {n_skills:>3} skills, first step (index built): {first:.2f} ms")
        big.close()


def median_ms(work: Callable[[], object], runs: int = 21) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


if __name__ == "__main__":
    sys.exit(main())
