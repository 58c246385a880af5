/// Invariants of the hooked decoder that hold for any valid configuration.
module MechInterp.Analysis.Tests.ModelProperties

open Xunit
open FsCheck.Xunit
open TorchSharp
open MechInterp.Hooks
open MechInterp.Model
open MechInterp.Analysis.Tests.Generators

let tokensFor (c: ModelCase) =
    torch.randint(0L, int64 c.Config.d_vocab, [| c.Batch; c.Positions |], dtype = torch.ScalarType.Int64,
                  generator = torch.Generator(uint64 c.TokenSeed))

let close (a: torch.Tensor) (b: torch.Tensor) tol = a.allclose(b, rtol = 1e-4, atol = tol)

[<Collection("torch")>]
type DecoderProperties(_fixture: TorchFixture) =

    [<Property(Arbitrary = [| typeof<ModelArbitraries> |], MaxTest = 25)>]
    member _.``changing token t changes no logits before t`` (c: ModelCase) =
        c.Positions < 2L
        || (use _scope = torch.NewDisposeScope()
            use model = new HookedTransformer(c.Config)
            let tokens = tokensFor c
            let t = c.Positions - 1L
            let changed = tokens.clone()
            let next = (tokens.select(1, t) + 1L).remainder(torch.tensor (int64 c.Config.d_vocab))
            changed.select(1, t).copy_(next) |> ignore
            let a = model.forward tokens
            let b = model.forward changed
            close (a.narrow(1, 0L, t)) (b.narrow(1, 0L, t)) 1e-6)

    [<Property(Arbitrary = [| typeof<ModelArbitraries> |], MaxTest = 20)>]
    member _.``a hook that returns its input changes nothing`` (c: ModelCase) =
        use _scope = torch.NewDisposeScope()
        use model = new HookedTransformer(c.Config)
        let tokens = tokensFor c
        let plain = model.forward tokens
        let hooked = model.RunWithHooks(tokens, Hook((fun _ -> true), HookFn(fun act _ -> act.clone())))
        // Hooks on the scores and the pattern make attention materialize them (softmax, then matmul) instead of the
        // fused kernel: the same function in another float32 order. Logits of order 1 then differ by ~2e-6 (a
        // generated d_head-2 MoE case: 2.0e-6 at max |logit| 2.3, failing an atol of 1e-6 near zero).
        close plain hooked 1e-5

    [<Property(Arbitrary = [| typeof<ResidualModelArbitraries> |], MaxTest = 20)>]
    member _.``zero-ablating a layer's output changes the next residual by exactly that output`` (c: ModelCase) =
        use _scope = torch.NewDisposeScope()
        use model = new HookedTransformer(c.Config)
        let tokens = tokensFor c
        let layer = c.TokenSeed % c.Config.n_layers
        let out = HookNames.AttnOut(layer)
        let post = HookNames.ResidPost(layer)
        let struct (_, clean) = model.RunWithCache(tokens, (fun n -> n = out || n = post))
        use clean = clean
        // With the MLP after it, resid_post also changes through the MLP; compare on attention-only layers
        // by also freezing the MLP output to its clean value.
        let mlpOut = HookNames.MlpOut(layer)
        let struct (_, cleanMlp) = model.RunWithCache(tokens, (fun n -> n = mlpOut))
        use cleanMlp = cleanMlp
        let hooks =
            [| yield Hook(out, HookFn(fun act _ -> torch.zeros_like act))
               if not c.Config.attn_only then yield Hook(mlpOut, HookFn(fun _ _ -> cleanMlp.[mlpOut])) |]
        let struct (_, ablated) = model.RunWithCache(tokens, (fun n -> n = post), hooks)
        use ablated = ablated
        close (clean.[post] - ablated.[post]) clean.[out] 1e-5

    [<Property(Arbitrary = [| typeof<ModelArbitraries> |], MaxTest = 12)>]
    member _.``save then load gives identical logits`` (c: ModelCase) =
        use _scope = torch.NewDisposeScope()
        use model = new HookedTransformer(c.Config)
        let path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"mi-prop-{System.Guid.NewGuid():N}.safetensors")
        try
            model.Save path
            use loaded = HookedTransformer.Load path
            let tokens = tokensFor c
            (model.forward tokens).equal(loaded.forward tokens).all().item<bool>()
        finally
            System.IO.File.Delete path
