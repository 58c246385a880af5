/// The vector quantizer of experiment_1's codebook variant: nearest-entry lookup, straight-through gradient,
/// EMA updates only on training passes, and the commitment loss.
module MechInterp.Analysis.Tests.CodebookTests

open System
open Xunit
open TorchSharp
open MechInterp.Analysis.Discretization.Codebook

let private settings = { Size = 2; Commitment = 0.25; Decay = 0.5 }

/// Two tight clusters around (−1, 0) and (+1, 0), alternating rows: [1, 8, 2].
let private clusters () =
    torch.tensor([| -1.0f; 0.0f;  1.0f; 0.0f;  -1.1f; 0.1f;  1.1f; -0.1f
                    -0.9f; -0.1f; 0.9f; 0.1f;  -1.0f; 0.05f; 1.0f; -0.05f |]).reshape(1L, 8L, 2L)

let private rows (t: torch.Tensor) = t.reshape(-1L, 2L).data<float32>().ToArray() |> Array.chunkBySize 2

[<Collection("torch")>]
type CodebookTests(_fixture: TorchFixture) =

    [<Fact>]
    member _.``every vector is replaced by an entry and the gradient passes straight through`` () =
        use _scope = torch.NewDisposeScope()
        use vq = new VectorQuantizer(settings, [| 3 |])
        let x = clusters().requires_grad_()
        let q = vq.Quantize x
        let out = rows (q.detach())
        // two distinct outputs at most (two entries), up to the rounding of x + (q − x)
        let rounded = out |> Array.map (fun r -> Math.Round(float r.[0], 4), Math.Round(float r.[1], 4)) |> Array.distinct
        Assert.True(rounded.Length <= 2, $"more outputs than entries: {rounded}")
        q.sum().backward()
        match x.grad with
        | null -> failwith "no gradient reached the input"
        | g -> Assert.True(g.eq(torch.ones_like g).all().item<bool>(), "the straight-through gradient is not the identity")
        Assert.True((vq.TakeCommitmentLoss()).IsSome, "a training pass queued no commitment loss")
        Assert.True((vq.TakeCommitmentLoss()).IsNone, "the commitment loss is handed out once")

    [<Fact>]
    member _.``training passes move the entries to the cluster means and measurements leave them`` () =
        use _scope = torch.NewDisposeScope()
        use vq = new VectorQuantizer(settings, [| 0 |])
        let x = clusters ()
        for _ in 1 .. 30 do vq.Quantize(x.requires_grad_(false).clone().requires_grad_()) |> ignore
        vq.TakeCommitmentLoss() |> ignore
        let trained =
            use _ = torch.no_grad()
            rows (vq.Quantize x)
        // both clusters get their own entry at (±1, 0) once the EMA settles (whatever the initial pick)
        let xs = trained |> Array.map (fun r -> Math.Round(float r.[0], 4)) |> Array.distinct |> Array.sort
        Assert.Equal(2, xs.Length)
        Assert.Equal(-1.0, xs.[0], 2)
        Assert.Equal(1.0, xs.[1], 2)
        let again =
            use _ = torch.no_grad()
            rows (vq.Quantize(x * 3.0f))
        let after =
            use _ = torch.no_grad()
            rows (vq.Quantize x)
        Assert.Equal<float32[][]>(trained, after)
        Assert.True((vq.TakeCommitmentLoss()).IsNone, "a no-grad pass queued a commitment loss")
        let used, perplexity = (vq.Usage()).[0]
        Assert.Equal(2, used)
        Assert.InRange(perplexity, 1.99, 2.01)
        ignore again

    [<Fact>]
    member _.``bad codebook settings and widths are named`` () =
        use _scope = torch.NewDisposeScope()
        let bad s = (Assert.Throws<ArgumentException>(fun () -> new VectorQuantizer(s, [| 0 |]) |> ignore)).Message
        Assert.Contains("at least 2 entries, got 1", bad { settings with Size = 1 })
        Assert.Contains("decay must be in (0, 1), got 1", bad { settings with Decay = 1.0 })
        Assert.Contains("commitment weight must be finite and ≥ 0, got -1", bad { settings with Commitment = -1.0 })
        use vq = new VectorQuantizer(settings, [| 0 |])
        vq.Quantize(clusters ()) |> ignore
        Assert.Contains("entries of width 2, got vectors of width 3",
                        (Assert.Throws<ArgumentException>(fun () -> vq.Quantize(torch.zeros(1L, 4L, 3L)) |> ignore)).Message)
        Assert.Contains("x must be [instance = 1, .., d]",
                        (Assert.Throws<ArgumentException>(fun () -> vq.Quantize(torch.zeros(2L, 4L, 2L)) |> ignore)).Message)

    [<Fact>]
    member _.``each instance has its own codebook, fitted to its own vectors`` () =
        use _scope = torch.NewDisposeScope()
        use vq = new VectorQuantizer(settings, [| 0; 1 |])
        // Instance 0 sees clusters at (±1, 0), instance 1 the same clusters scaled by 5.
        let x = torch.cat([| clusters (); clusters () * 5.0f |], 0L)     // [2, 8, 2]
        for _ in 1 .. 30 do vq.Quantize(x.clone().requires_grad_()) |> ignore
        match vq.TakeCommitmentLoss() with
        | Some loss -> Assert.Equal<int64[]>([| 2L |], loss.shape)
        | None -> failwith "no commitment loss per instance"
        let q =
            use _ = torch.no_grad()
            vq.Quantize x
        let xs (i: int64) = rows q.[i] |> Array.map (fun r -> Math.Round(float r.[0], 1)) |> Array.distinct |> Array.sort
        Assert.Equal<float[]>([| -1.0; 1.0 |], xs 0L)
        Assert.Equal<float[]>([| -5.0; 5.0 |], xs 1L)
        // One instance taken out keeps its codebook.
        use second = vq.Select 1
        let alone =
            use _ = torch.no_grad()
            second.Quantize(x.narrow(0L, 1L, 1L))
        Assert.Equal<float32[][]>(rows q.[1L], rows alone)
