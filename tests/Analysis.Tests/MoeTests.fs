/// Mixture-of-experts routing and dispatch against hand-computed examples and their defining formulas,
/// on both backends of Kernel.Route and Kernel.ExpertMlp (native and managed); native == managed on random
/// shapes is in KernelEquivalenceProperties.
module MechInterp.Analysis.Tests.MoeTests

open System
open Xunit
open FsCheck
open FsCheck.FSharp
open FsCheck.Xunit
open TorchSharp
open MechInterp
open MechInterp.Hooks
open MechInterp.Kernels
open MechInterp.Model

/// A one-layer MoE whose expert input is replaced by `x` [1, tokens, 4] at blocks.0.ln2.hook_normalized:
/// router W_gate reads dims 0 and 1; expert e is relu((e + 1) x) (W_in = (e + 1) I, W_out = I, biases 0).
let private handModel (capacityFactor: float) (renormalize: bool) =
    let cfg = DecoderConfig(d_model = 4, n_layers = 1, n_heads = 1, d_mlp = 4, d_vocab = 5, n_ctx = 8, act_fn = "relu",
                            n_experts = 2, experts_per_token = 1, expert_capacity_factor = capacityFactor,
                            norm_topk_prob = renormalize, seed = 1)
    let model = new HookedTransformer(cfg)
    let moe = model.blocks.[0].mlp :?> Moe
    use _ = torch.no_grad()
    moe.W_gate.zero_().index_put_(torch.tensor 1.0f, [| torch.TensorIndex.Single 0L; torch.TensorIndex.Single 0L |]) |> ignore
    moe.W_gate.index_put_(torch.tensor 1.0f, [| torch.TensorIndex.Single 1L; torch.TensorIndex.Single 1L |]) |> ignore
    for e in 0 .. 1 do
        moe.W_in.[int64 e].copy_(torch.eye(4L).mul((float (e + 1)).ToScalar())) |> ignore
        moe.W_out.[int64 e].copy_(torch.eye(4L)) |> ignore
    model, moe

let private handInput =
    [| [| 2.0; 0.0; 1.0; 0.0 |]     // logits (2, 0): expert 0
       [| 0.0; 3.0; 0.0; 1.0 |]     // logits (0, 3): expert 1
       [| 1.0; 0.0; 0.0; 2.0 |]     // logits (1, 0): expert 0
       [| 0.5; 1.0; 1.0; 1.0 |] |]  // logits (0.5, 1): expert 1

let private sigmoid x = 1.0 / (1.0 + exp (-x))

/// The model reads the backend from Settings.Kernels; tests in the "torch" collection run one at a time.
let private withBackend (backend: KernelBackend) (f: unit -> 'a) =
    let saved = Settings.Kernels
    Settings.Kernels <- backend
    try f () finally Settings.Kernels <- saved

let backends: obj[] seq = [ [| box KernelBackend.Native |]; [| box KernelBackend.Managed |] ]

/// Runs the hand model; returns (expert index, gates, mlp out, expert weights) as arrays, and the routing's numbers.
let private runHandWith (backend: KernelBackend) (capacityFactor: float) (renormalize: bool) =
    withBackend backend (fun () ->
        use _scope = torch.NewDisposeScope()
        let model, moe = handModel capacityFactor renormalize
        use model = model
        let x = torch.tensor(handInput |> Array.concat |> Array.map float32).view(1L, 4L, 4L)
        let replace = Hook(HookNames.LnNormalized(0, 2), HookFn(fun _ _ -> x))
        let names = set [ HookNames.ExpertIndices(0); HookNames.ExpertWeights(0); HookNames.MlpOut(0) ]
        let struct (_, cache) = model.RunWithCache(torch.zeros([| 1L; 4L |], dtype = torch.int64), (fun n -> names.Contains n), replace)
        use cache = cache
        let index = cache.[HookNames.ExpertIndices(0)].reshape(-1L).data<int64>().ToArray()
        let weights = cache.[HookNames.ExpertWeights(0)].reshape(4L, 2L).to_type(torch.float64).data<float>().ToArray() |> Array.chunkBySize 2
        let routing = nonNull moe.LastRouting
        let gates = routing.Gates.reshape(-1L).to_type(torch.float64).data<float>().ToArray()
        let out = cache.[HookNames.MlpOut(0)].reshape(4L, 4L).to_type(torch.float64).data<float>().ToArray() |> Array.chunkBySize 4
        index, gates, out, weights, routing)

let private runHand backend capacityFactor =
    let index, gates, out, _, routing = runHandWith backend capacityFactor false
    index, gates, out, routing

let private assertClose (expected: float) (actual: float) =
    Assert.True(abs (expected - actual) < 1e-5, $"expected {expected}, got {actual}")

/// Holds the MemberData of the theories.
type Marker =
    static member backends = backends

[<Collection("torch")>]
type MoeRoutingTests(_fixture: TorchFixture) =

    [<Theory; MemberData(nameof backends, MemberType = typeof<Marker>)>]
    member _.``routing and dispatch match a hand-computed example``(backend: KernelBackend) =
        let index, gates, out, routing = runHand backend 0.0
        Assert.Equal<int64[]>([| 0L; 1L; 0L; 1L |], index)
        // Top-1 of a two-way softmax: the gate is the sigmoid of the logit margin.
        let expectedGates = [| sigmoid 2.0; sigmoid 3.0; sigmoid 1.0; sigmoid 0.5 |]
        Array.iter2 assertClose expectedGates gates
        for t in 0 .. 3 do
            let scale = expectedGates.[t] * float (index.[t] + 1L)
            Array.iter2 assertClose (handInput.[t] |> Array.map (fun v -> scale * max v 0.0)) out.[t]
        Assert.Equal<int64[]>([| 2L; 2L |], routing.Counts)
        Assert.Equal(0L, routing.Dropped)

    [<Theory; MemberData(nameof backends, MemberType = typeof<Marker>)>]
    member _.``hook_expert_weights is the softmax over all experts and a renormalized top-1 gate is 1``(backend: KernelBackend) =
        let index, gates, out, weights, _ = runHandWith backend 0.0 true
        Assert.Equal<int64[]>([| 0L; 1L; 0L; 1L |], index)
        // Before top-k: both experts' weights, the softmax of the router logits (dims 0 and 1 of the input).
        for t in 0 .. 3 do
            assertClose (sigmoid (handInput.[t].[0] - handInput.[t].[1])) weights.[t].[0]
            assertClose 1.0 (Array.sum weights.[t])
        Array.iter (assertClose 1.0) gates
        for t in 0 .. 3 do
            Array.iter2 assertClose (handInput.[t] |> Array.map (fun v -> float (index.[t] + 1L) * max v 0.0)) out.[t]

    [<Theory; MemberData(nameof backends, MemberType = typeof<Marker>)>]
    member _.``capacity overflow drops the later tokens and reports them``(backend: KernelBackend) =
        // capacity = ceil(0.5 · 4 tokens · 1 / 2 experts) = 1: tokens 2 and 3 find their expert full.
        let index, _, out, routing = runHand backend 0.5
        Assert.Equal<int64[]>([| 0L; 1L; 0L; 1L |], index)                  // a dropped pair keeps its expert index
        Assert.Equal(1L, routing.Capacity)
        Assert.Equal<int64[]>([| 1L; 1L |], routing.Counts)
        Assert.Equal(2L, routing.Dropped)
        Assert.Equal(4L, routing.Pairs)
        for t in 2 .. 3 do Array.iter (assertClose 0.0) out.[t]
        Assert.True(out.[0].[0] > 1.0, "token 0 was kept and must still have its output")

    [<Theory; MemberData(nameof backends, MemberType = typeof<Marker>)>]
    member _.``capacity takes every token's first choice before any second choice``(backend: KernelBackend) =
        use _scope = torch.NewDisposeScope()
        // E = 2, k = 2, capacity 2. Slot 0: t0→0, t1→0, t2→1 all kept; slot 1: t0→1 kept (expert 1 has 2),
        // t1→1 and t2→0 dropped (both experts full).
        let index = torch.tensor([| 0L; 1L; 0L; 1L; 1L; 0L |]).view(1L, 3L, 2L)
        let weights = torch.tensor([| 0.6f; 0.4f; 0.7f; 0.3f; 0.2f; 0.8f |]).view(1L, 3L, 2L)   // [group, tokens, experts]
        let routed = Kernel.Route(weights, 2, capacity = 2L, expertIndex = index, backend = Nullable backend)
        Assert.Equal<bool[]>([| true; true; true; false; true; false |], routed.Kept.reshape(-1L).data<bool>().ToArray())
        Assert.Equal<float32[]>([| 0.6f; 0.4f; 0.7f; 0.0f; 0.8f; 0.0f |], routed.Gates.reshape(-1L).data<float32>().ToArray())
        Assert.Equal<int64[]>([| 2L; 2L |], routed.Counts)
        Assert.Equal(2L, routed.Dropped)

    [<Theory; MemberData(nameof backends, MemberType = typeof<Marker>)>]
    member _.``an expert index replaced by a hook is capacitated by the same routing``(backend: KernelBackend) =
        withBackend backend (fun () ->
            use _scope = torch.NewDisposeScope()
            let experts, k = 4, 2
            let cfg = DecoderConfig(d_model = 8, n_layers = 1, n_heads = 2, d_mlp = 6, d_vocab = 7, n_ctx = 10, n_experts = experts,
                                    experts_per_token = k, expert_capacity_factor = 0.75, seed = 3)
            use model = new HookedTransformer(cfg)
            use g = new torch.Generator(4UL)
            let tokens = torch.randint(0L, 7L, [| 3L; 10L |], generator = g)
            // Every token's first choice forced to expert 0 (its second moved off 0): expert 0 overflows.
            let force (index: torch.Tensor) =
                let first = torch.zeros_like(index.narrow(-1L, 0L, 1L))
                let second = index.narrow(-1L, 1L, 1L).where(index.narrow(-1L, 1L, 1L).ne(0L.ToScalar()), torch.ones_like(first))
                torch.cat([| first; second |], -1L)
            let names = set [ HookNames.ExpertWeights(0); HookNames.ExpertIndices(0); HookNames.LnNormalized(0, 2); HookNames.MlpOut(0) ]
            let hook = Hook(HookNames.ExpertIndices(0), HookFn(fun index _ -> force index))
            let struct (_, cache) = model.RunWithCache(tokens, (fun n -> names.Contains n), hook)
            use cache = cache
            let routing = nonNull (model.blocks.[0].mlp :?> Moe).LastRouting
            let weights = cache.[HookNames.ExpertWeights(0)].reshape(1L, 30L, int64 experts)
            let forced = (force cache.[HookNames.ExpertIndices(0)]).reshape(1L, 30L, int64 k)
            let capacity = ExpertRouting.CapacityOf(0.75, 30L, k, experts)
            let reference = Kernel.Route(weights, k, capacity = capacity, expertIndex = forced, backend = Nullable backend)
            Assert.True(routing.ExpertIndex.eq(forced).all().item<bool>(), "the model routed to the hook's experts")
            Assert.True(routing.Kept.eq(reference.Kept).all().item<bool>(), "kept pairs differ")
            Assert.Equal<int64[]>(reference.Counts, routing.Counts)
            Assert.Equal(capacity, routing.Capacity)
            Assert.Equal(reference.Dropped, routing.Dropped)
            Assert.True(routing.Counts.[0] = capacity && routing.Dropped >= 30L - capacity, $"expert 0 keeps {routing.Counts.[0]} of 30 first choices, capacity {capacity}")
            // The layer's output is the kept pairs' gate-weighted expert outputs.
            let x = cache.[HookNames.LnNormalized(0, 2)].reshape(-1L, 8L)
            let all = (model.blocks.[0].mlp :?> Moe).ExpertOutputs(x)                             // [E, tokens, d]
            let tokenIds = torch.arange(30L).unsqueeze(1).expand(-1L, int64 k)                     // [tokens, k]
            let picked = all.index([| torch.TensorIndex.Tensor(forced.reshape(30L, int64 k)); torch.TensorIndex.Tensor tokenIds |])   // [tokens, k, d]
            let expected = picked.mul(reference.Gates.reshape(30L, int64 k).unsqueeze(-1L)).sum(1L)
            Assert.True(expected.allclose(cache.[HookNames.MlpOut(0)].reshape(-1L, 8L), rtol = 1e-4, atol = 1e-5), "mlp out"))

    [<Fact>]
    member _.``a negative capacity factor is rejected by name and value``() =
        let bad = DecoderConfig(d_model = 8, n_heads = 2, n_experts = 2, experts_per_token = 1, expert_capacity_factor = -1.0)
        let e = Assert.Throws<ArgumentException>(fun () -> bad.Validate() |> ignore)
        Assert.Contains("expert_capacity_factor", e.Message)
        Assert.Contains("-1", e.Message)

    [<Fact>]
    member _.``the load-balancing loss equals alpha E sum f_e P_e plus the z-loss``() =
        use _scope = torch.NewDisposeScope()
        let alpha, zCoef, experts, k = 0.05, 0.003, 4, 2
        let cfg = DecoderConfig(d_model = 8, n_layers = 1, n_heads = 2, d_mlp = 6, d_vocab = 7, n_ctx = 10, n_experts = experts,
                                experts_per_token = k, router_aux_loss_coef = alpha, router_z_loss_coef = zCoef, seed = 5)
        use model = new HookedTransformer(cfg)
        use g = new torch.Generator(2UL)
        let tokens = torch.randint(0L, 7L, [| 3L; 9L |], generator = g)
        let names = set [ HookNames.RouterLogits(0); HookNames.ExpertIndices(0) ]
        let struct (_, cache) = model.RunWithCache(tokens, fun n -> names.Contains n)
        use cache = cache
        let logits = cache.[HookNames.RouterLogits(0)].reshape(-1L, int64 experts).to_type(torch.float64).data<float>().ToArray() |> Array.chunkBySize experts
        let index = cache.[HookNames.ExpertIndices(0)].reshape(-1L).data<int64>().ToArray()
        let softmax (row: float[]) = let m = Array.max row in let z = row |> Array.sumBy (fun v -> exp (v - m)) in row |> Array.map (fun v -> exp (v - m) / z)
        let probs = logits |> Array.map softmax
        let f = Array.init experts (fun e -> float (index |> Array.filter ((=) (int64 e)) |> Array.length) / float index.Length)
        let p = Array.init experts (fun e -> probs |> Array.averageBy (fun row -> row.[e]))
        let balance = alpha * float experts * Array.fold2 (fun s a b -> s + a * b) 0.0 f p
        let z = logits |> Array.averageBy (fun row -> let m = Array.max row in (m + log (row |> Array.sumBy (fun v -> exp (v - m)))) ** 2.0)
        let expected = balance + zCoef * z
        let actual = model.AuxiliaryLoss.item<float32>() |> float
        Assert.True(abs (expected - actual) < 1e-5, $"aux loss {actual}, formula {expected}")
        // A balanced router (all logits equal) makes the balance term exactly α, whatever the ties pick.
        use _ = torch.no_grad()
        (model.blocks.[0].mlp :?> Moe).W_gate.zero_() |> ignore
        model.forward(tokens) |> ignore
        let uniform = model.AuxiliaryLoss.item<float32>() |> float
        Assert.True(abs (uniform - (alpha + zCoef * (log (float experts)) ** 2.0)) < 1e-5, $"balanced router aux loss {uniform}")

/// A random MoE and input for the dispatch property.
type MoeSpec = { Seed: int; Experts: int; K: int; Tokens: int; DModel: int; DMlp: int }

type MoeArbitraries =
    static member MoeSpec() =
        gen {
            let! experts = Gen.choose (1, 6)
            let! k = Gen.choose (1, min 3 experts)
            let! tokens = Gen.choose (1, 24)
            let! d = Gen.choose (1, 8)
            let! f = Gen.choose (1, 8)
            let! seed = Gen.choose (0, 1_000_000)
            return { Seed = seed; Experts = experts; K = k; Tokens = tokens; DModel = d; DMlp = f }
        }
        |> Arb.fromGen

[<Collection("torch")>]
type MoeDispatchProperties(_fixture: TorchFixture) =

    [<Property(Arbitrary = [| typeof<MoeArbitraries> |], MaxTest = 60)>]
    member _.``every token's output is the gate-weighted sum of its experts' outputs`` (spec: MoeSpec) =
        use _scope = torch.NewDisposeScope()
        use g = new torch.Generator(uint64 spec.Seed)
        let e, d, f, t = int64 spec.Experts, int64 spec.DModel, int64 spec.DMlp, int64 spec.Tokens
        let x = torch.randn([| t; d |], generator = g, dtype = torch.float64)
        let wIn = torch.randn([| e; d; f |], generator = g, dtype = torch.float64)
        let bIn = torch.randn([| e; f |], generator = g, dtype = torch.float64)
        let wOut = torch.randn([| e; f; d |], generator = g, dtype = torch.float64)
        let bOut = torch.randn([| e; d |], generator = g, dtype = torch.float64)
        let logits = torch.randn([| t; e |], generator = g, dtype = torch.float64)
        let struct (gates, index) = logits.softmax(-1L).topk(spec.K, dim = -1)
        let act = Func<torch.Tensor, torch.Tensor>(fun h -> h.relu())
        let combined = Kernel.ExpertMlp(x, index, gates, wIn, bIn, wOut, bOut, act, KernelBackend.Managed)   // [tokens, d]
        // Reference: one token and one expert at a time.
        let expected =
            [ for token in 0L .. t - 1L ->
                  [ for slot in 0L .. int64 spec.K - 1L ->
                        let ex = index.[token, slot].item<int64>()
                        let hidden = x.[token].matmul(wIn.[ex]).add(bIn.[ex]).relu()
                        hidden.matmul(wOut.[ex]).add(bOut.[ex]).mul(gates.[token, slot]) ]
                  |> List.reduce (fun a b -> a.add b) ]
            |> List.toArray
            |> torch.stack
        combined.allclose(expected, rtol = 1e-9, atol = 1e-9)

    [<Property(MaxTest = 15)>]
    member _.``a Moe layer's output is the gate-weighted sum of its ExpertOutputs`` (seed: uint16) (renormalize: bool) =
        use _scope = torch.NewDisposeScope()
        let cfg = DecoderConfig(d_model = 8, n_layers = 1, n_heads = 2, d_mlp = 5, d_vocab = 9, n_ctx = 6, n_experts = 3,
                                experts_per_token = 2, norm_topk_prob = renormalize, seed = int seed)
        use model = new HookedTransformer(cfg)
        use g = new torch.Generator(uint64 seed)
        let tokens = torch.randint(0L, 9L, [| 2L; 6L |], generator = g)
        let names = set [ HookNames.LnNormalized(0, 2); HookNames.ExpertWeights(0); HookNames.ExpertIndices(0); HookNames.MlpOut(0) ]
        let struct (_, cache) = model.RunWithCache(tokens, fun n -> names.Contains n)
        use cache = cache
        let x = cache.[HookNames.LnNormalized(0, 2)].reshape(-1L, 8L)
        let all = (model.blocks.[0].mlp :?> Moe).ExpertOutputs(x)                               // [E, tokens, d]
        let index = cache.[HookNames.ExpertIndices(0)].reshape(-1L, 2L)                // [tokens, k]
        // Gates by TransformerLens's meaning of the hooks: the weights (softmax over all experts) at the chosen ones.
        let chosen = cache.[HookNames.ExpertWeights(0)].reshape(-1L, 3L).gather(-1L, index)   // [tokens, k]
        let gates = if renormalize then chosen.div(chosen.sum(-1L, keepdim = true)) else chosen
        let tokenIds = torch.arange(x.shape.[0]).unsqueeze(1).expand(-1L, 2L)                  // [tokens, k]
        let picked = all.index([| torch.TensorIndex.Tensor index; torch.TensorIndex.Tensor tokenIds |])   // [tokens, k, d]
        let expected = picked.mul(gates.unsqueeze(-1L)).sum(1L)
        expected.allclose(cache.[HookNames.MlpOut(0)].reshape(-1L, 8L), rtol = 1e-4, atol = 1e-5)
