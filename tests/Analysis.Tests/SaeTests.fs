/// Sparse autoencoders: metrics on hand-computed cases, a perfect dictionary that must score 1, the assignment
/// against brute force, JumpReLU's straight-through gradients, the SAELens file layout, the activation store,
/// splicing, and small trainings that must recover a known dictionary.
module MechInterp.Analysis.Tests.SaeTests

open System
open System.IO
open Xunit
open TorchSharp
open MechInterp.Hooks
open MechInterp.Model
open MechInterp.Analysis.Dictionary

let private close (tolerance: float) (expected: float) (actual: float) =
    Assert.True(abs (expected - actual) <= tolerance, $"expected {expected}, got {actual}")

let private t2 (rows: float32[][]) = torch.tensor(Array.concat rows).reshape(int64 rows.Length, int64 rows.[0].Length)

/// A standard SAE whose dictionary is [I; −I]: ReLU(x) − ReLU(−x) = x, so it reconstructs any x exactly.
let private perfect (dIn: int) hook =
    use eye = torch.eye(int64 dIn)
    use wDec = torch.cat([| eye; eye.neg() |], 0L)                   // [2 d_in, d_in]
    Sae.Create(SaeConfig.create Standard dIn (2 * dIn) 0 hook "test", wDec.t(), torch.zeros(int64 (2 * dIn)), wDec, torch.zeros(int64 dIn), None)

[<Collection("torch")>]
type SaeTests(_fixture: TorchFixture) =

    [<Fact>]
    member _.``reconstruction metrics match a hand computation`` () =
        use x = t2 [| [| 1.0f; 0.0f |]; [| 0.0f; 1.0f |] |]
        use xHat = t2 [| [| 1.0f; 0.0f |]; [| 0.0f; 0.0f |] |]
        use f = t2 [| [| 1.0f; 0.0f; 0.0f |]; [| 0.0f; 0.0f; 0.0f |] |]
        let m = SaeMetrics.ofReconstruction x xHat f
        close 1e-12 0.5 m.L0                       // one latent on the first input, none on the second
        close 1e-12 0.25 m.Mse                     // one error of 1 among four elements
        close 1e-12 0.0 m.ExplainedVariance        // Σ‖x − x̂‖² = 1 and Σ‖x − x̄‖² = 4 × 0.25 = 1
        close 1e-6 0.5 m.CosineSimilarity          // cos 1, then cos 0 against a zero reconstruction
        Assert.Equal<float[]>([| 0.5; 0.0; 0.0 |], m.Frequency)
        Assert.Equal(2, m.Dead)
        Assert.Equal(1, m.Dense)                   // fires on half the inputs, over the 10% line

    [<Fact>]
    member _.``a perfect dictionary scores MMCS 1 and explained variance 1`` () =
        use sae = perfect 4 "x"
        use _g = torch.no_grad()
        use codes = torch.rand(512L, 4L).sub(torch.tensor 0.5f)
        let m = SaeMetrics.evaluate sae codes
        close 1e-6 1.0 m.ExplainedVariance
        close 1e-6 1.0 m.CosineSimilarity
        use truth = torch.eye(4L)
        let cos = GroundTruth.cosines truth sae.W_dec
        close 1e-9 1.0 (GroundTruth.mmcs cos [| 0 .. 3 |])
        close 1e-9 1.0 (GroundTruth.matchedMeanAbsCosine cos [| 0 .. 3 |])

    [<Fact>]
    member _.``MMCS lets features share a latent and the matching does not`` () =
        use truth = t2 [| [| 1.0f; 0.0f |]; [| 0.0f; 1.0f |] |]
        let s = float32 (1.0 / sqrt 2.0)
        use decoder = t2 [| [| s; s |]; [| 0.0f; 0.0f |] |]   // one diagonal latent, one dead (zero) row
        let cos = GroundTruth.cosines truth decoder
        close 1e-6 (1.0 / sqrt 2.0) (GroundTruth.mmcs cos [| 0; 1 |])
        close 1e-6 (1.0 / sqrt 2.0 / 2.0) (GroundTruth.matchedMeanAbsCosine cos [| 0; 1 |])

    [<Fact>]
    member _.``the Hungarian assignment is the brute-force optimum`` () =
        let rng = Random(5)
        let rec permutations (items: int list) (k: int) : int list list =
            if k = 0 then [ [] ] else [ for x in items do for rest in permutations (List.filter ((<>) x) items) (k - 1) -> x :: rest ]
        for trial in 1 .. 40 do
            let n, m = 1 + rng.Next 4, 4 + rng.Next 3
            let cost = Array2D.init n m (fun _ _ -> Math.Round(rng.NextDouble() * 10.0, 1))
            let a = Hungarian.assign cost
            Assert.Equal(n, (Array.distinct a).Length)
            let total = a |> Array.mapi (fun r c -> cost.[r, c]) |> Array.sum
            let best = permutations [ 0 .. m - 1 ] n |> List.map (fun p -> p |> List.mapi (fun r c -> cost.[r, c]) |> List.sum) |> List.min
            close 1e-9 best total

    [<Fact>]
    member _.``JumpReLU passes the paper's pseudo-derivatives to the threshold`` () =
        use pre = t2 [| [| 0.1f |]; [| 0.5f |] |]                      // [batch 2, one latent]
        let theta = torch.tensor([| 0.12f |]).requires_grad_(true)
        let eps = 0.1
        let y = JumpReluSae.activate eps pre theta
        Assert.Equal<float32[]>([| 0.0f; 0.5f |], y.detach().reshape(-1L).data<float32>().ToArray())
        y.sum().backward()
        // Only the first input lies within ε/2 of θ: ∂/∂θ = −θ/ε = −1.2.
        close 1e-5 -1.2 (float (theta.grad.item<float32>()))
        theta.grad <- null
        (JumpReluSae.penalty eps pre theta).backward()
        // L0 penalty, mean over the batch of 2: −(1/ε) / 2 = −5.
        close 1e-4 -5.0 (float (theta.grad.item<float32>()))

    [<Fact>]
    member _.``TopK keeps k latents and BatchTopK k per input on average`` () =
        use pre = t2 [| [| 3.0f; -1.0f; 2.0f; 0.5f |]; [| 0.1f; 0.2f; 0.3f; 0.4f |] |]
        use top = TopKSae.activate 2 pre
        Assert.Equal<float32[]>([| 3.0f; 0.0f; 2.0f; 0.0f; 0.0f; 0.0f; 0.3f; 0.4f |], top.reshape(-1L).data<float32>().ToArray())
        use batch = TopKSae.activateBatch 2 pre
        // The 4 largest of the batch: 3, 2, 0.5 from the first input, 0.4 from the second.
        Assert.Equal<float32[]>([| 3.0f; 0.0f; 2.0f; 0.5f; 0.0f; 0.0f; 0.0f; 0.4f |], batch.reshape(-1L).data<float32>().ToArray())

    [<Fact>]
    member _.``bad configs and inputs are refused, naming the value`` () =
        let e = Assert.Throws<ArgumentException>(fun () -> SaeConfig.validate (SaeConfig.create TopK 8 16 17 "x" "m"))
        Assert.Contains("k (17) must not exceed d_sae (16)", e.Message)
        use sae = perfect 3 (HookNames.ResidPost 0)
        use wrong = torch.zeros(2L, 5L)
        let e = Assert.Throws<ArgumentException>(fun () -> sae.Encode wrong |> ignore)
        Assert.Contains("d_in = 3", e.Message)
        Assert.Contains("[2, 5]", e.Message)
        use nan = torch.tensor([| 1.0f; nanf; 0.0f |]).reshape(1L, 3L)
        let e = Assert.Throws<ArgumentException>(fun () -> sae.Encode nan |> ignore)
        Assert.Contains("1 NaN", e.Message)
        use store = new ActivationStore(3, "h", StoreSettings.inMemory)
        let e = Assert.Throws<ArgumentException>(fun () -> store.Add nan)
        Assert.Contains("NaN", e.Message)

    [<Fact>]
    member _.``an SAE round-trips through SAELens's layout, and a missing tensor is named`` () =
        let dir = Path.Combine(Path.GetTempPath(), $"sae-test-{Guid.NewGuid():N}")
        try
            let config = SaeConfig.create JumpRelu 4 6 0 (HookNames.ResidMid 1) "tiny"
            use sae = Sae.Init(config, 3L, 0.25)
            SaeFile.save dir sae
            use back = SaeFile.load dir
            Assert.Equal(config, back.Config)
            for a, b in [ sae.W_enc :> torch.Tensor, back.W_enc :> torch.Tensor; sae.b_enc, back.b_enc; sae.W_dec, back.W_dec; sae.b_dec, back.b_dec; sae.Threshold, back.Threshold ] do
                Assert.True(a.allclose(b), "a tensor changed in the round trip")
            let cfg = File.ReadAllText(Path.Combine(dir, "cfg.json"))
            Assert.Contains("\"architecture\": \"jumprelu\"", cfg)
            Assert.Contains("\"hook_name\": \"blocks.1.hook_resid_mid\"", cfg)
            // Rewrite the weights without W_dec: the load names it.
            let weights = Path.Combine(dir, SaeFile.weightsFile)
            let struct (tensors, _) = MechInterp.IO.SafeTensors.Read weights
            tensors.Remove "W_dec" |> ignore
            MechInterp.IO.SafeTensors.Write(weights, tensors)
            let e = Assert.Throws<InvalidDataException>(fun () -> SaeFile.load dir |> ignore)
            Assert.Contains("\"W_dec\" is missing", e.Message)
        finally
            if Directory.Exists dir then Directory.Delete(dir, true)

    [<Fact>]
    member _.``the store spills shards and hands every row out once an epoch`` () =
        let dir = Path.Combine(Path.GetTempPath(), $"store-test-{Guid.NewGuid():N}")
        try
            use store = new ActivationStore(3, "h", { ShardRows = 4; MaxRowsInMemory = 0; SpillDirectory = Some dir })
            use rows = torch.arange(30.0f).reshape(10L, 3L)
            store.Add(rows.narrow(0L, 0L, 7L))
            store.Add(rows.narrow(0L, 7L, 3L))
            store.Flush()
            Assert.Equal(10L, store.Rows)
            Assert.Equal(2, store.Shards.Length)                            // 7 rows spill at once; the last 3 on flush
            let next = store.Sampler 1
            let drawn = [ for _ in 1 .. 2 -> next 5 ] |> Array.ofList
            use epoch = torch.cat(drawn, 0L)
            let firsts = epoch.select(1L, 0L).data<float32>().ToArray() |> Array.sort
            Assert.Equal<float32[]>([| for r in 0 .. 9 -> float32 (3 * r) |], firsts)
            for d in drawn do d.Dispose()
        finally
            if Directory.Exists dir then Directory.Delete(dir, true)

    [<Fact>]
    member _.``an SAE trains from a store's sampler, also when the caller holds no_grad`` () =
        use store = new ActivationStore(4, "h", StoreSettings.inMemory)
        do
            // Added inside a dispose scope, as Collect does per batch: the store must keep its rows.
            use _scope = torch.NewDisposeScope()
            store.Add(torch.randn(100L, 4L))
        use _noGrad = torch.no_grad()
        // The sampler keeps its shuffled chunk across the training loop's dispose scopes.
        let trained = SaeTraining.train ignore { SaeTraining.defaults with Steps = 30; BatchSize = 16; LogEvery = 30 } (SaeConfig.create TopK 4 8 2 "h" "m") (store.Sampler 3)
        use sae = trained.Sae
        Assert.Equal(480L, trained.Samples)
        Assert.True(sae.W_dec.isfinite().all().item<bool>(), "the decoder must be finite after training")

    [<Fact>]
    member _.``splicing a perfect SAE recovers all of the CE loss and KL, and the error term keeps the logits`` () =
        let config = DecoderConfig(d_model = 8, n_layers = 1, n_heads = 2, d_mlp = 16, d_vocab = 11, n_ctx = 6, seed = 4)
        use model = new HookedTransformer(config)
        use sae = perfect 8 (HookNames.ResidMid 0)
        use tokens = torch.randint(11L, [| 4L; 6L |], dtype = torch.int64)
        use mask = torch.ones([| 4L; 5L |], dtype = torch.ScalarType.Bool)
        let s = Splice.scores model sae tokens mask
        close 1e-4 1.0 s.CeLossRecovered
        close 1e-3 1.0 s.KlRecovered
        // The ratio is only meaningful when ablating changes the loss.
        Assert.True(abs (s.CeZero - s.CeClean) > 1e-3, $"zero-ablating the stream should change the loss: {s.CeZero} vs {s.CeClean}")
        use _g = torch.no_grad()
        // A random SAE is far from perfect, but with the error term added back the logits are the clean ones.
        use bad = Sae.Init(SaeConfig.create TopK 8 16 2 (HookNames.ResidMid 0) "tiny", 1L, 0.0)
        use clean = model.Forward tokens
        use kept = Splice.run model bad true tokens
        use lost = Splice.run model bad false tokens
        Assert.True(clean.allclose(kept, 1e-4, 1e-5), "the error term must restore the clean logits")
        Assert.False(clean.allclose(lost, 1e-4, 1e-5), "a random SAE without the error term should change the logits")

    /// Each architecture recovers a small known dictionary (32 features in 16 dimensions, about 2 active).
    [<Theory>]
    [<InlineData("standard")>]
    [<InlineData("topk")>]
    [<InlineData("batchtopk")>]
    [<InlineData("jumprelu")>]
    member _.``each architecture recovers a small synthetic dictionary`` (name: string) =
        let a = Architecture.parse name
        use data = new SyntheticDictionary(16, 32, 2.0, 2.0, 11L)
        let settings = { SaeTraining.defaults with Steps = 600; BatchSize = 256; LearningRate = 3e-3; LogEvery = 600; SparsityCoefficient = 1.0 }
        let trained = SaeTraining.train ignore settings (SaeConfig.create a 16 64 2 "x" "synthetic") data.Sample
        use sae = trained.Sae
        let cos = GroundTruth.cosines data.Directions sae.W_dec
        let mmcs = GroundTruth.mmcs cos [| 0 .. 31 |]
        Assert.True(mmcs > 0.9, $"{name}: MMCS {mmcs:F3} on a 32-feature dictionary")
