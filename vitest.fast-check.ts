import fc from 'fast-check';

// fast-check's default size ("small") caps every generated array at 10 elements whatever its
// maxLength says: a property written over 200-step sequences would only ever see 10 steps.
// "large" lets them reach their maxLength (up to 1000). FC_BASE_SIZE overrides it for a local run.
fc.configureGlobal({ baseSize: (process.env.FC_BASE_SIZE as fc.Size | undefined) ?? 'large' });
