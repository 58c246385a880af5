using MechInterp.Hooks;
using MechInterp.IO;
using MechInterp.Runtime;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MechInterp.Model;

/// <summary>
/// A GPT-style decoder whose every activation can be read and replaced through named hook points
/// (TransformerLens names and shapes). tokens [batch, pos] int64 → logits [batch, pos, d_vocab].
/// </summary>
public sealed class HookedTransformer : nn.Module<Tensor, Tensor>
{
    public DecoderConfig Config { get; }
    public Embed embed;
    public PosEmbed? pos_embed;
    public ModuleList<TransformerBlock> blocks;
    public Norm ln_final;
    public Unembed unembed;
    public readonly HookPoint hook_embed, hook_pos_embed;
    private readonly HookRegistry hooks = new();

    public HookedTransformer(DecoderConfig config) : base("HookedTransformer")
    {
        TorchRuntime.EnsureLoaded();
        Config = config.Validate();
        var init = new Init(config);
        embed = new Embed(config, init);
        hook_embed = hooks.Add("hook_embed");
        if (config.positional_embedding_type == "standard")
        {
            pos_embed = new PosEmbed(config, init);
            hook_pos_embed = hooks.Add("hook_pos_embed");
        }
        else hook_pos_embed = new HookPoint("hook_pos_embed");
        blocks = new ModuleList<TransformerBlock>(Enumerable.Range(0, config.n_layers)
            .Select(layer => new TransformerBlock(layer, config, init, hooks)).ToArray());
        ln_final = new Norm("ln_final", "ln_final", config, hooks);
        unembed = new Unembed(config, init);
        RegisterComponents();
    }

    /// <summary>Every hook point by name, in the order the forward pass reaches them.</summary>
    public HookRegistry Hooks => hooks;

    /// <summary>The summed router losses of the MoE blocks from the last forward pass; null for dense models.</summary>
    public Tensor? AuxiliaryLoss =>
        blocks.Select(b => (b.mlp as Moe)?.LastAuxLoss).Where(l => l is not null)
              .Aggregate((Tensor?)null, (sum, l) => sum is null ? l : sum.add(l!));

    /// <summary>tokens [batch, pos] (or [pos]) int64 → logits [batch, pos, d_vocab].</summary>
    public override Tensor forward(Tensor tokens)
    {
        tokens = TokenCheck.Validate(tokens, Config);
        var resid = hook_embed.Run(embed.forward(tokens));                    // [batch, pos, d_model]
        if (pos_embed is not null)
            resid = resid.add(hook_pos_embed.Run(pos_embed.forward(tokens)));
        foreach (var block in blocks)
            resid = block.forward(resid);
        return unembed.forward(ln_final.forward(resid));                      // [batch, pos, d_vocab]
    }

    /// <summary>Same as <see cref="forward"/>.</summary>
    public Tensor Forward(Tensor tokens) => forward(tokens);

    /// <summary>
    /// Runs with hooks attached for this call only; they are removed when it ends, also when it throws.
    /// </summary>
    public Tensor RunWithHooks(Tensor tokens, params Hook[] fwdHooks)
    {
        var attached = Attach(fwdHooks, observer: false);
        try { return forward(tokens); }
        finally { Detach(attached); }
    }

    /// <summary>
    /// Runs and records the activations whose names pass <paramref name="namesFilter"/> (all when null),
    /// optionally with hooks (e.g. patching) attached; the cache records what the hooks produced.
    /// </summary>
    public (Tensor Logits, ActivationCache Cache) RunWithCache(Tensor tokens, Func<string, bool>? namesFilter = null, params Hook[] fwdHooks)
    {
        var store = new Dictionary<string, Tensor>();
        var cacheHooks = hooks.Points.Values
            .Where(p => namesFilter is null || namesFilter(p.Name))
            .Select(p => new Hook(p.Name, (act, hp) =>
            {
                store[hp.Name] = act.detach().DetachFromDisposeScope();
                return null;
            }))
            .ToArray();
        // User hooks first, so the cache holds what they produced.
        var attached = Attach(fwdHooks, observer: false);
        attached.AddRange(Attach(cacheHooks, observer: true));
        try
        {
            var logits = forward(tokens);
            return (logits, new ActivationCache(store));
        }
        catch
        {
            foreach (var t in store.Values) t.Dispose();
            throw;
        }
        finally { Detach(attached); }
    }

    private List<(HookPoint, HookFn)> Attach(IEnumerable<Hook> fwdHooks, bool observer)
    {
        var attached = new List<(HookPoint, HookFn)>();
        foreach (var hook in fwdHooks)
        {
            if (hook.ExactName is { } name && !hooks.Points.ContainsKey(name))
            {
                Detach(attached);
                _ = hooks[name];   // throws, listing the hook names
            }
            foreach (var point in hooks.Points.Values.Where(p => hook.Filter(p.Name)))
            {
                point.Add(hook.Fn, observer);
                attached.Add((point, hook.Fn));
            }
        }
        return attached;
    }

    private static void Detach(List<(HookPoint, HookFn)> attached)
    {
        foreach (var (point, fn) in attached) point.Remove(fn);
    }

    /// <summary>Removes every hook from every hook point (after an interrupted interactive session).</summary>
    public void ResetHooks()
    {
        foreach (var p in hooks.Points.Values) p.Clear();
    }

    /// <summary>Parameters by TransformerLens name ("blocks.0.attn.W_Q" ...).</summary>
    public IReadOnlyDictionary<string, Tensor> StateDict() =>
        named_parameters().ToDictionary(p => p.name, p => (Tensor)p.parameter);

    /// <summary>Writes a safetensors checkpoint (config in __metadata__["config"]); atomic: temp file then rename.</summary>
    public void Save(string path) => Checkpoint.Save(this, path);

    /// <summary>Reads a checkpoint written by <see cref="Save"/> (or by Python with the same names and shapes).</summary>
    public static HookedTransformer Load(string path) => Checkpoint.Load(path);
}
