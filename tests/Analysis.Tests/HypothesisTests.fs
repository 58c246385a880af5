/// The residual-hypothesis machinery: plain decoders, the tuned lens, linear CKA, layer surgery, and the
/// experiment end to end at a toy size.
module MechInterp.Analysis.Tests.HypothesisTests

open System
open System.IO
open Xunit
open FsCheck
open FsCheck.FSharp
open FsCheck.Xunit
open TorchSharp
open MechInterp.Hooks
open MechInterp.Model
open MechInterp.Analysis.Statistics
open MechInterp.Analysis.Residual
open MechInterp.Analysis.Tests.Generators

let private tiny residual attnOnly layers =
    DecoderConfig(d_model = 16, n_layers = layers, n_heads = 2, d_vocab = 11, n_ctx = 8, attn_only = attnOnly, d_mlp = 32,
                  residual = residual, init_range = 0.3, seed = 3)

let private tokens () = torch.randint(11L, [| 4L; 8L |], generator = torch.Generator(7UL))

let private maxDiff (a: torch.Tensor) (b: torch.Tensor) = (a - b).abs().max().item<float32>() |> float
let private same (a: torch.Tensor) (b: torch.Tensor) = a.shape = b.shape && a.eq(b).all().item<bool>()

/// Every stream of a model on some tokens, as the lens takes them: [n_layers + 1, instance, batch, pos, d_model].
let private streamsOf (model: HookedTransformer) (t: torch.Tensor) =
    let names = Lens.streamNames model |> Set.ofList
    let struct (_, cache) = model.RunWithCache(t, Func<string, bool>(names.Contains))
    use cache = cache
    Lens.streams model cache

/// Random matrices with a seed, and an orthogonal one from the QR decomposition of a random matrix.
type Representations = { N: int; D1: int; D2: int; Seed: int }

let representations =
    gen {
        let! n = Gen.choose (8, 40)
        let! d1 = Gen.choose (1, 6)
        let! d2 = Gen.choose (1, 6)
        let! seed = Gen.choose (0, 100_000)
        return { N = n; D1 = d1; D2 = d2; Seed = seed }
    }

type RepresentationArbitraries =
    static member Representations() = Arb.fromGen representations

let private matrices (r: Representations) =
    let g = torch.Generator(uint64 r.Seed)
    torch.randn([| int64 r.N; int64 r.D1 |], generator = g, dtype = torch.float64),
    torch.randn([| int64 r.N; int64 r.D2 |], generator = g, dtype = torch.float64),
    let struct (q, _) = torch.linalg.qr(torch.randn([| int64 r.D1; int64 r.D1 |], generator = g, dtype = torch.float64)) in q

let private near (a: float) (b: float) = abs (a - b) < 1e-9

[<Collection("torch")>]
type HypothesisTests(_fixture: TorchFixture) =

    [<Property(Arbitrary = [| typeof<PlainModelArbitraries> |], MaxTest = 20)>]
    member _.``a plain decoder's hooks hold the replaced stream: resid_mid is attn_out, resid_post the last sublayer's output`` (c: ModelCase) =
        use _scope = torch.NewDisposeScope()
        use model = new HookedTransformer(c.Config)
        let struct (_, cache) = model.RunWithCache(ModelProperties.tokensFor c)
        use cache = cache
        [ 0 .. c.Config.n_layers - 1 ]
        |> List.forall (fun l ->
            let last = if c.Config.attn_only then HookNames.AttnOut(l) else HookNames.MlpOut(l)
            same cache.[HookNames.ResidPost(l)] cache.[last]
            && (c.Config.attn_only || same cache.[HookNames.ResidMid(l)] cache.[HookNames.AttnOut(l)])
            && (l = 0 || same cache.[HookNames.ResidPre(l)] cache.[HookNames.ResidPost(l - 1)]))

    [<Fact>]
    member _.``residual and plain decoders of one config have the same parameters, and differ in their logits`` () =
        use _scope = torch.NewDisposeScope()
        use residual = new HookedTransformer(tiny true false 2)
        use plain = new HookedTransformer(tiny false false 2)
        let shapes (m: HookedTransformer) = m.StateDict() |> Seq.map (fun kv -> kv.Key, List.ofArray kv.Value.shape) |> List.ofSeq
        Assert.Equal<(string * int64 list) list>(shapes residual, shapes plain)
        for KeyValue(name, p) in residual.StateDict() do Assert.True(same p (plain.StateDict().[name]), $"{name} differs at the same seed")
        Assert.True(maxDiff (residual.forward (tokens ())) (plain.forward (tokens ())) > 1e-3, "the flag changed nothing")

    [<Fact>]
    member _.``the residual flag is saved in the checkpoint and read back; a non-boolean is rejected naming field and value`` () =
        use _scope = torch.NewDisposeScope()
        let dir = Directory.CreateTempSubdirectory("mi-residual-")
        try
            use plain = new HookedTransformer(tiny false true 2)
            let path = Path.Combine(dir.FullName, "plain.safetensors")
            plain.Save path
            use loaded = HookedTransformer.Load path
            Assert.False(loaded.Config.residual)
            Assert.True(maxDiff (plain.forward (tokens ())) (loaded.forward (tokens ())) = 0.0)
            Assert.Contains("\"residual\":false", plain.Config.ToJson())
            // An old config without the field is a residual model.
            Assert.True(DecoderConfig.FromJson("""{"d_model": 16, "n_heads": 2}""").residual)
            for bad in [ "\"yes\""; "1"; "null" ] do
                let e = Assert.Throws<ArgumentException>(fun () -> DecoderConfig.FromJson($"""{{"d_model": 16, "residual": {bad}}}""") |> ignore)
                Assert.Contains("residual", e.Message)
                Assert.Contains(bad, e.Message)
        finally
            dir.Delete(true)

    [<Fact>]
    member _.``running the blocks in their order is the forward pass; no blocks is embed then unembed`` () =
        use _scope = torch.NewDisposeScope()
        use _ = torch.no_grad()
        for cfg in [ tiny true false 3; tiny true true 2 ] do
            use model = new HookedTransformer(cfg)
            let t = tokens ()
            Assert.True(maxDiff (model.ForwardThroughBlocks(t, [| 0 .. cfg.n_layers - 1 |])) (model.forward t) = 0.0)
            let embedded = model.embed.forward(t.unsqueeze(0L)) + (nonNull model.pos_embed).forward(t.unsqueeze(0L))   // [1, batch, pos, d]
            let direct = Lens.external model (Lens.readOut model embedded)
            Assert.True(maxDiff (model.ForwardThroughBlocks(t, [||])) direct < 1e-6)
            Assert.Throws<ArgumentOutOfRangeException>(fun () -> model.ForwardThroughBlocks(t, [| cfg.n_layers |]) |> ignore) |> ignore

    [<Fact>]
    member _.``deleting block l of a residual model equals zero-ablating what it writes`` () =
        use _scope = torch.NewDisposeScope()
        use _ = torch.no_grad()
        use model = new HookedTransformer(tiny true false 3)
        let t = tokens ()
        let zero = HookFn(fun act _ -> torch.zeros_like act)
        let deleted = model.ForwardThroughBlocks(t, [| 0; 2 |])
        let ablated = model.RunWithHooks(t, Hook(HookNames.AttnOut(1), zero), Hook(HookNames.MlpOut(1), zero))
        Assert.True(maxDiff deleted ablated < 1e-5, $"max diff {maxDiff deleted ablated}")
        // A swap is not a deletion: it changes the logits.
        Assert.True(maxDiff (model.ForwardThroughBlocks(t, [| 1; 0; 2 |])) (model.forward t) > 1e-4)

    [<Fact>]
    member _.``on a model whose layers add nothing, the tuned lens has KL 0 at every layer`` () =
        use _scope = torch.NewDisposeScope()
        use model = new HookedTransformer(tiny true false 2)
        do
            use _ = torch.no_grad()
            for KeyValue(name, p) in model.StateDict() do
                if name.EndsWith "W_O" || name.EndsWith "b_O" || name.EndsWith "W_out" || name.EndsWith "b_out" then p.zero_() |> ignore
        let streams = streamsOf model (tokens ())
        use lens = TunedLens.train model { Steps = 50; LearningRate = 1e-2 } streams
        let kl = TunedLens.klByLayer (TunedLens.logits model lens streams)
        Assert.Equal<int64[]>([| 3L; 1L |], kl.shape)
        // Adam moves each entry by about lr even on a zero gradient: ≈ 0 means small against the 0.05+ nats of a real gap.
        Assert.True(kl.abs().max().item<float32>() < 1e-4f, $"KL {kl.abs().max().item<float32>()}")

    [<Fact>]
    member _.``the tuned lens learns a rotated stream the logit lens cannot read, and saves and loads`` () =
        use _scope = torch.NewDisposeScope()
        use model = new HookedTransformer(tiny true false 2)
        // Streams 0 and 1 are the last stream in a rotated basis: an affine translator recovers it exactly.
        let real = streamsOf model (tokens ())
        let final = real.[2L]
        let struct (q, _) = torch.linalg.qr(torch.randn([| 16L; 16L |], generator = torch.Generator(11UL)))
        let streams = torch.stack([| final.matmul(q); final.matmul(q.t()); final |])
        let logitKl = TunedLens.klByLayer (TunedLens.logitLens model streams)
        use lens = TunedLens.train model { Steps = 400; LearningRate = 1e-2 } streams
        let tunedKl = TunedLens.klByLayer (TunedLens.logits model lens streams)
        for l in 0L .. 1L do
            let a, b = logitKl.[l, 0L].item<float32>(), tunedKl.[l, 0L].item<float32>()
            Assert.True(a > 0.05f, $"layer {l}: logit-lens KL {a} is too small for the test to mean anything")
            Assert.True(b < 0.1f * a, $"layer {l}: tuned-lens KL {b} against logit-lens KL {a}")
        // The model's parameters are left as they were: trainable, and without gradients from the lens.
        for p in model.parameters() do
            Assert.True(p.requires_grad)
            Assert.True(isNull p.grad || p.grad.abs().max().item<float32>() = 0.0f)
        let path = Path.Combine(Path.GetTempPath(), $"mi-lens-{Guid.NewGuid():N}.safetensors")
        try
            TunedLens.save path lens
            use back = TunedLens.load model path
            Assert.True(same back.A lens.A && same back.B lens.B)
            use deeper = new HookedTransformer(tiny true false 3)
            let e = Assert.Throws<InvalidDataException>(fun () -> TunedLens.load deeper path |> ignore)
            Assert.Contains(path, e.Message)
        finally
            File.Delete path

    [<Property(Arbitrary = [| typeof<RepresentationArbitraries> |], MaxTest = 50)>]
    member _.``linear CKA is symmetric, 1 for identical inputs, and invariant to rotation and isotropic scaling`` (r: Representations) =
        use _scope = torch.NewDisposeScope()
        let x, y, q = matrices r
        let c = Cka.linear x y
        near c (Cka.linear y x)
        && near (Cka.linear x x) 1.0
        && near c (Cka.linear (x.matmul(q)) y)
        && near c (Cka.linear (x * 3.7) (y * 0.2))
        && c >= -1e-12 && c <= 1.0 + 1e-9

    [<Fact>]
    member _.``linear CKA separates related from unrelated representations and rejects bad input`` () =
        use _scope = torch.NewDisposeScope()
        let g = torch.Generator(5UL)
        let x = torch.randn([| 500L; 4L |], generator = g)
        let unrelated = torch.randn([| 500L; 4L |], generator = g)
        Assert.True(Cka.linear x unrelated < 0.1)
        Assert.True(Cka.linear x (torch.cat([| x; unrelated.narrow(1L, 0L, 1L) * 0.1 |], 1L)) > 0.95)
        Assert.Throws<ArgumentException>(fun () -> Cka.linear x (torch.randn(3L, 4L)) |> ignore) |> ignore
        Assert.Throws<ArgumentException>(fun () -> Cka.linear (torch.ones(10L, 2L)) (torch.randn(10L, 2L)) |> ignore) |> ignore

    [<Fact>]
    member _.``the experiment measures every arm, depth and task, and draws no verdict from runs that did not learn`` () =
        let s =
            { HypothesisSection.quickSettings with
                DModel = 16; Heads = 2; Depths = [ 1; 2 ]; Seeds = [ 0; 1 ]; Tasks = [ Hypothesis.Induction; Hypothesis.Language ]
                Induction = { HypothesisSection.quickSettings.Induction with Steps = 10; EvalEvery = 5; ConvergenceWindow = 5 }
                Language = { HypothesisSection.quickSettings.Language with Steps = 10; EvalEvery = 5; ConvergenceWindow = 5 }
                InductionVocab = 12; MaxRepeat = 4; MinRepeat = 2; LanguageLength = 12; LensBatch = 4; AnalysisBatch = 4
                LensFit = { Steps = 5; LearningRate = 1e-2 } }
        let results = Hypothesis.run s ignore None
        Assert.Equal(2 * 2 * 2, results.Length)
        for a in results do
            Assert.Equal(2, a.Runs.Length)
            for r in a.Runs do
                // Ten steps learn neither task: nothing may be reported learned.
                Assert.False(r.Convergence.Learned, $"{a.Task} depth {a.Depth} {a.Arm} seed {r.Seed} reported learned after 10 steps")
                Assert.Equal(a.Depth + 1, r.LogitLensLoss.Length)
                Assert.Equal(a.Depth + 1, r.TunedLensKl.Length)
                Assert.Equal(0.0, r.LogitLensKl.[a.Depth], 6)
                Assert.Equal(a.Depth, r.DeletionIncrease.Length)
                Assert.Equal(a.Depth - 1, r.SwapIncrease.Length)
                Assert.Equal(a.Depth, r.EditSize.Length)
                Assert.Equal(a.Depth + 1, Array2D.length1 r.Cka)
                Assert.All(r.EditSize, fun e -> Assert.True(Double.IsFinite e && e > 0.0))
        let verdicts = HypothesisSection.verdicts results
        Assert.NotEmpty(verdicts)
        Assert.All(verdicts, fun v -> Assert.StartsWith("no verdict", v.Verdict))
        let answer = HypothesisSection.answer s results
        Assert.StartsWith("Not answered", answer.Verdict)
        let json = HypothesisSection.toJson s results
        Assert.Equal(8, json.["arms"].AsArray().Count)
