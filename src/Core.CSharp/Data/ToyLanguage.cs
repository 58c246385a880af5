namespace MechInterp.Data;

/// <summary>
/// A toy language whose every token carries ground-truth labels of interpretable features, fixed
/// here before any model is trained:
///   sentences  [ADJ]{0,2} NOUN VERB [ADJ]{0,1} NOUN "."  with subject-verb number agreement;
///   counting   "(" d d+1 d+2 ... ")"  (digits count up mod 10, 2 to 5 of them).
/// Features: token_class, number (of nouns and verbs), position_parity, inside_brackets, and
/// next_rule (which rule fixes the next token: agreement, counting, free choice...).
/// </summary>
public sealed class ToyLanguage : ITokenTask, ITokenizer
{
    private Dictionary<string, int>? byName;

    /// <summary>BOS, the first token of every sequence.</summary>
    public int? BosToken => Bos;

    /// <summary>Token names separated by spaces ("BOS N3s V3s ." ) → ids.</summary>
    public IReadOnlyList<int> Encode(string text) => NamedTokens.Encode(text, Vocab, TokenName, ref byName);

    public string Decode(IEnumerable<int> ids) => NamedTokens.Decode(ids, TokenName);

    public string TokenText(int id) => TokenName(id);

    public const int Bos = 0, Open = 1, Close = 2, Period = 3;
    public const int NounsPerNumber = 6, VerbsPerNumber = 6, Adjectives = 8, Digits = 10;
    public const int FirstNoun = 4;                                   // 12 nouns: 6 singular, then 6 plural
    public const int FirstVerb = FirstNoun + 2 * NounsPerNumber;      // 12 verbs: 6 singular, then 6 plural
    public const int FirstAdjective = FirstVerb + 2 * VerbsPerNumber;
    public const int FirstDigit = FirstAdjective + Adjectives;
    public const int Vocab = FirstDigit + Digits;                     // 46

    public static readonly string[] TokenClasses = ["bos", "noun", "verb", "adjective", "digit", "open", "close", "period"];
    public static readonly string[] Numbers = ["none", "singular", "plural"];
    public static readonly string[] Parities = ["even", "odd"];
    public static readonly string[] InsideBrackets = ["outside", "inside"];
    public static readonly string[] NextRules = ["free", "agreement", "counting", "end_of_sentence", "after_period"];

    public ToyLanguage(int sequenceLength)
    {
        if (sequenceLength < 2) throw new ArgumentOutOfRangeException(nameof(sequenceLength), sequenceLength, $"sequence length must be at least 2, got {sequenceLength}");
        SequenceLength = sequenceLength;
    }

    public string Name => "toy_language";
    public int VocabSize => Vocab;
    public int SequenceLength { get; }

    public IReadOnlyDictionary<string, string[]> Features { get; } = new Dictionary<string, string[]>
    {
        ["token_class"] = TokenClasses,
        ["number"] = Numbers,
        ["position_parity"] = Parities,
        ["inside_brackets"] = InsideBrackets,
        ["next_rule"] = NextRules,
    };

    /// <summary>A readable name for a token id ("N3s", "V2p", "A5", "D7", "(", ")", ".", "BOS").</summary>
    public static string TokenName(int id) => id switch
    {
        Bos => "BOS", Open => "(", Close => ")", Period => ".",
        < FirstVerb => $"N{(id - FirstNoun) % NounsPerNumber}{((id - FirstNoun) < NounsPerNumber ? "s" : "p")}",
        < FirstAdjective => $"V{(id - FirstVerb) % VerbsPerNumber}{((id - FirstVerb) < VerbsPerNumber ? "s" : "p")}",
        < FirstDigit => $"A{id - FirstAdjective}",
        < Vocab => $"D{id - FirstDigit}",
        _ => throw new ArgumentOutOfRangeException(nameof(id), id, $"token id must be in [0, {Vocab}), got {id}"),
    };

    public TokenBatch Sample(int batchSize, Random rng)
    {
        Batches.RequirePositive(batchSize, nameof(batchSize));
        int n = SequenceLength;
        var tokens = new long[batchSize, n];
        var labels = Features.Keys.ToDictionary(k => k, _ => new long[batchSize, n]);
        var mask = new bool[batchSize, n - 1];
        for (int b = 0; b < batchSize; b++)
        {
            var doc = Document(rng, n);
            for (int p = 0; p < n; p++)
            {
                var (token, cls, number, inside, rule) = doc[p];
                tokens[b, p] = token;
                labels["token_class"][b, p] = cls;
                labels["number"][b, p] = number;
                labels["position_parity"][b, p] = p % 2;
                labels["inside_brackets"][b, p] = inside ? 1 : 0;
                labels["next_rule"][b, p] = rule;
                if (p < n - 1) mask[b, p] = true;
            }
        }
        return new TokenBatch(Batches.Int64(tokens), Batches.Mask(mask),
            labels.ToDictionary(kv => kv.Key, kv => Batches.Int64(kv.Value)));
    }

    private readonly record struct Tok(int Token, int Class, int Number, bool Inside, int Rule);

    /// <summary>One document of exactly n tokens: BOS, then sentences and counting segments, cut at n.</summary>
    private static List<Tok> Document(Random rng, int n)
    {
        var doc = new List<Tok> { new(Bos, 0, 0, false, 0) };
        while (doc.Count < n)
        {
            if (rng.NextDouble() < 0.35) Counting(rng, doc);
            else Sentence(rng, doc);
        }
        return doc.GetRange(0, n);
    }

    private static void Sentence(Random rng, List<Tok> doc)
    {
        for (int i = rng.Next(3); i > 0; i--) doc.Add(new(FirstAdjective + rng.Next(Adjectives), 3, 0, false, 0));
        bool plural = rng.Next(2) == 1;
        // The subject noun fixes the verb's number: its next-token rule is agreement.
        doc.Add(new(FirstNoun + (plural ? NounsPerNumber : 0) + rng.Next(NounsPerNumber), 1, plural ? 2 : 1, false, 1));
        doc.Add(new(FirstVerb + (plural ? VerbsPerNumber : 0) + rng.Next(VerbsPerNumber), 2, plural ? 2 : 1, false, 0));
        if (rng.Next(2) == 1) doc.Add(new(FirstAdjective + rng.Next(Adjectives), 3, 0, false, 0));
        bool objPlural = rng.Next(2) == 1;
        // The object noun ends the sentence: the next token is always ".".
        doc.Add(new(FirstNoun + (objPlural ? NounsPerNumber : 0) + rng.Next(NounsPerNumber), 1, objPlural ? 2 : 1, false, 3));
        doc.Add(new(Period, 7, 0, false, 4));
    }

    private static void Counting(Random rng, List<Tok> doc)
    {
        int start = rng.Next(Digits), length = 2 + rng.Next(4);
        doc.Add(new(Open, 5, 0, false, 0));
        for (int i = 0; i < length; i++)
            doc.Add(new(FirstDigit + (start + i) % Digits, 4, 0, true, 2));   // next: the following digit or ")"
        doc.Add(new(Close, 6, 0, false, 0));
    }
}
