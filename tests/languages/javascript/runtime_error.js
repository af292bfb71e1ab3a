throw new Error("failing");
