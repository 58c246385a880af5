/// Native and managed kernels agree on random inputs (the reference backend keeps the fast one honest).
module MechInterp.Analysis.Tests.KernelEquivalenceProperties

open System
open Xunit
open FsCheck
open FsCheck.FSharp
open FsCheck.Xunit
open TorchSharp
open MechInterp
open MechInterp.Kernels
open MechInterp.Analysis.Tests.Generators

[<Collection("torch")>]
type SoftmaxProperties(_fixture: TorchFixture) =

    [<Property(Arbitrary = [| typeof<Arbitraries> |], MaxTest = 60)>]
    member _.``native softmax equals managed softmax, forward and backward`` (spec: TensorSpec) =
        Assert.True(Native.NativeKernels.IsAvailable, Native.NativeKernels.UnavailableReason)
        use _scope = torch.NewDisposeScope()
        let gen = torch.Generator(uint64 spec.Seed)
        let x = torch.randn(spec.Shape, generator = gen).mul(torch.tensor spec.Scale)
        let w = torch.randn(spec.Shape, generator = gen)
        let xn = x.clone().requires_grad_()
        let xm = x.clone().requires_grad_()
        let yn = Kernel.SoftmaxLastDim(xn, KernelBackend.Native)
        let ym = Kernel.SoftmaxLastDim(xm, KernelBackend.Managed)
        yn.mul(w).sum().backward()
        ym.mul(w).sum().backward()
        yn.allclose(ym, rtol = 1e-5, atol = 1e-6)
        && xn.grad.allclose(xm.grad, rtol = 1e-4, atol = 1e-5)
        && not (yn.isnan().any().item<bool>())

let private same (a: torch.Tensor) (b: torch.Tensor) = a.shape = b.shape && a.eq(b).all().item<bool>()

/// max |expected − actual| over the finite entries, within tol · max(1, max |expected|), the -inf (masked) entries the same.
let private close (tol: float) (expected: torch.Tensor) (actual: torch.Tensor) =
    let finite = expected.isfinite()
    let zero = torch.tensor(0.0f)
    let e, a = expected.where(finite, zero), actual.where(finite, zero)
    let scale = max 1.0 (float (e.abs().max().item<float32>()))
    same finite (actual.isfinite())
    && not (actual.isnan().any().item<bool>())
    && float (e.sub(a).abs().max().item<float32>()) <= tol * scale

/// A random attention problem: sizes past one 64-row block, fewer queries than keys, odd d_head, rotary on all or part of d_head.
type AttentionCase = { Batch: int; Heads: int; Queries: int; Keys: int; DHead: int; Causal: bool; RotaryDim: int; Seed: int }

type AttentionArbitraries =
    static member AttentionCase() =
        gen {
            let! batch = Gen.choose (1, 2)
            let! heads = Gen.choose (1, 3)
            let! keys = Gen.frequency [ 3, Gen.choose (1, 40); 1, Gen.choose (60, 140) ]
            let! queries = Gen.frequency [ 3, Gen.constant keys; 1, Gen.choose (1, keys) ]
            let! dHead = Gen.elements [ 1; 2; 7; 8; 16; 20; 32; 64 ]
            let! causal = Gen.frequency [ 3, Gen.constant true; 1, Gen.constant false ]
            let! rotaryDim = if dHead < 2 then Gen.constant 0 else Gen.frequency [ 2, Gen.constant 0; 1, Gen.choose (1, dHead / 2) |> Gen.map ((*) 2) ]
            let! seed = Gen.choose (0, 1_000_000)
            return { Batch = batch; Heads = heads; Queries = queries; Keys = keys; DHead = dHead; Causal = causal; RotaryDim = rotaryDim; Seed = seed }
        }
        |> Arb.fromGen

[<Collection("torch")>]
type AttentionProperties(_fixture: TorchFixture) =

    [<Property(Arbitrary = [| typeof<AttentionArbitraries> |], MaxTest = 40)>]
    member _.``native attention equals managed attention: z, scores, pattern and gradients`` (c: AttentionCase) =
        Assert.True(Native.NativeKernels.IsAvailable, Native.NativeKernels.UnavailableReason)
        use _scope = torch.NewDisposeScope()
        use gen = new torch.Generator(uint64 c.Seed)
        let b, h, tq, tk, d = int64 c.Batch, int64 c.Heads, int64 c.Queries, int64 c.Keys, int64 c.DHead
        let q, k, v = torch.randn([| b; h; tq; d |], generator = gen), torch.randn([| b; h; tk; d |], generator = gen), torch.randn([| b; h; tk; d |], generator = gen)
        let wz, wp = torch.randn([| b; h; tq; d |], generator = gen), torch.randn([| b; h; tq; tk |], generator = gen)
        let rotary = if c.RotaryDim = 0 then null else MechInterp.Model.Rotary(c.RotaryDim).Tables(tk, torch.float32)
        [ false; true ]
        |> List.forall (fun withPattern ->
            let leaves () = q.clone().requires_grad_(), k.clone().requires_grad_(), v.clone().requires_grad_()
            let (qn, kn, vn), (qm, km, vm) = leaves (), leaves ()
            let n = Kernel.Attention(qn, kn, vn, c.Causal, withPattern, KernelBackend.Native, rotary)
            let m = Kernel.Attention(qm, km, vm, c.Causal, withPattern, KernelBackend.Managed, rotary)
            let loss (r: AttentionResult) = if withPattern then r.Z.mul(wz).sum().add((nonNull r.Pattern).mul(wp).sum()) else r.Z.mul(wz).sum()
            (loss n).backward()
            (loss m).backward()
            close 1e-5 m.Z n.Z
            && (not withPattern || (close 1e-5 (nonNull m.Scores) (nonNull n.Scores) && close 1e-5 (nonNull m.Pattern) (nonNull n.Pattern)))
            && close 1e-4 (nonNull qm.grad) (nonNull qn.grad) && close 1e-4 (nonNull km.grad) (nonNull kn.grad)
            && close 1e-4 (nonNull vm.grad) (nonNull vn.grad))

/// A random routing and dispatch problem: several groups (a batched model's instances), a capacity that may drop,
/// renormalized gates or not, and a skew that makes the load uneven (the packed dispatch layout) or not (the padded one).
type DispatchCase =
    { Groups: int; Tokens: int; Experts: int; K: int; DModel: int; DMlp: int; CapacityFactor: float; Renormalize: bool; Skew: float; Seed: int }

type DispatchArbitraries =
    static member DispatchCase() =
        gen {
            let! groups = Gen.choose (1, 3)
            let! tokens = Gen.frequency [ 3, Gen.choose (1, 40); 1, Gen.choose (100, 300) ]
            let! experts = Gen.choose (1, 8)
            let! k = Gen.choose (1, min 3 experts)
            let! d = Gen.choose (1, 24)
            let! f = Gen.choose (1, 32)
            let! factor = Gen.elements [ 0.0; 0.5; 1.0; 1.25 ]
            let! renormalize = Gen.elements [ false; true ]
            let! skew = Gen.elements [ 0.0; 3.0 ]
            let! seed = Gen.choose (0, 1_000_000)
            return { Groups = groups; Tokens = tokens; Experts = experts; K = k; DModel = d; DMlp = f; CapacityFactor = factor
                     Renormalize = renormalize; Skew = skew; Seed = seed }
        }
        |> Arb.fromGen

[<Collection("torch")>]
type DispatchProperties(_fixture: TorchFixture) =

    [<Property(Arbitrary = [| typeof<DispatchArbitraries> |], MaxTest = 40)>]
    member _.``native routing and dispatch equal managed: choice, capacity, output and gradients`` (c: DispatchCase) =
        Assert.True(Native.NativeKernels.IsAvailable, Native.NativeKernels.UnavailableReason)
        use _scope = torch.NewDisposeScope()
        use gen = new torch.Generator(uint64 c.Seed)
        let g, t, e, d, f = int64 c.Groups, int64 c.Tokens, int64 c.Experts, int64 c.DModel, int64 c.DMlp
        let skew = torch.linspace(c.Skew, 0.0, e).to_type(torch.float32)                         // [experts]
        let weights = torch.randn([| g; t; e |], generator = gen).add(skew).softmax(-1L)          // [groups, tokens, experts]
        let x = torch.randn([| g * t; d |], generator = gen)
        let experts = [| torch.randn([| g * e; d; f |], generator = gen).div(torch.tensor(sqrt (float d)))
                         torch.randn([| g * e; f |], generator = gen).mul(torch.tensor 0.1)
                         torch.randn([| g * e; f; d |], generator = gen).div(torch.tensor(sqrt (float f)))
                         torch.randn([| g * e; d |], generator = gen).mul(torch.tensor 0.1) |]
        let dy = torch.randn([| g * t; d |], generator = gen)
        let capacity = ExpertRouting.CapacityOf(c.CapacityFactor, t, c.K, c.Experts)
        let act = Func<torch.Tensor, torch.Tensor>(fun h -> torch.nn.functional.gelu h)
        let run backend =
            let w = weights.clone().requires_grad_()
            let xs = x.clone().requires_grad_()
            let ws = experts |> Array.map (fun p -> p.clone().requires_grad_())
            let r = Kernel.Route(w, c.K, c.Renormalize, capacity, backend = Nullable backend)
            let flatIndex = r.ExpertIndex.add(torch.arange(g).mul(e.ToScalar()).view(g, 1L, 1L)).reshape(-1L, int64 c.K)   // [groups · tokens, k]
            let y = Kernel.ExpertMlp(xs, flatIndex, r.Gates.reshape(-1L, int64 c.K), ws.[0], ws.[1], ws.[2], ws.[3], act, Nullable backend)
            y.mul(dy).sum().backward()
            r, y, nonNull w.grad, nonNull xs.grad, ws |> Array.map (fun p -> nonNull p.grad)
        let rn, yn, dwn, dxn, dn = run KernelBackend.Native
        let rm, ym, dwm, dxm, dm = run KernelBackend.Managed
        same rn.ExpertIndex rm.ExpertIndex && same rn.Kept rm.Kept && rn.Counts = rm.Counts && rn.Dropped = rm.Dropped
        && close 1e-5 rm.Gates rn.Gates
        && close 1e-4 ym yn && close 1e-4 dwm dwn && close 1e-4 dxm dxn
        && Array.forall2 (close 1e-4) dm dn
